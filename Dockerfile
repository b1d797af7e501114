# syntax=docker/dockerfile:1
# One image for saga-operator and the buy-video participant services:
#   docker run saga-operator:dev                                  the operator (saga-operator)
#   docker run saga-operator:dev saga-participant run videos      a participant
# Build it with `make image`. Two stages: the builder turns the project and its pinned dependencies
# into wheels; the final stage installs those wheels and nothing else, so no compiler, no build
# tools and no source tree reach the image that runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# pyproject.toml names README.md as the package's readme and looks for packages in these three folders.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY protocol/ protocol/
COPY participants/ participants/
# Every dependency has a binary wheel for CPython 3.11 on Linux; --only-binary makes a missing one an
# error here instead of a silent compile. The project itself is pure Python.
RUN pip wheel --wheel-dir /wheels --only-binary=:all: --no-binary=saga-operator .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="saga-operator" \
      org.opencontainers.image.description="Saga execution coordinator (Kopf, Kafka) and the buy-video participants" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder for this one step, so they add no layer. --no-index:
# nothing is fetched at this point, only the wheels built above are installed.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels saga-operator \
 && groupadd --system --gid 10001 saga \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin saga
# Numeric, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# /healthz, /readyz and /metrics (SAGA_HTTP_PORT). No HEALTHCHECK: Kubernetes ignores it and uses the
# probes in manifests/, and the port differs between the operator and the participants.
EXPOSE 8080
CMD ["saga-operator"]
