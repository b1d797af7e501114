# saga-operator: every entry point a person or CI uses. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# The product (the root pyproject.toml) with its dev tools, and beside it, editable, the two development-only
# distributions: the local control plane (testenv/) and the harness (harness/).
$(STAMP): pyproject.toml testenv/pyproject.toml harness/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e ./testenv -e ./harness
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the project and its dev tools

.PHONY: up
up: $(STAMP) ## start the local stack (etcd, kube-apiserver, Kafka) in the background; writes .stack/env
	$(PY) -m saga_testenv up

.PHONY: down
down: $(STAMP) ## stop the local stack; leaves no process behind
	$(PY) -m saga_testenv down

.PHONY: stack-status
stack-status: $(STAMP) ## is the local stack up and healthy? (exit 0 yes, 1 not up, 2 unhealthy)
	$(PY) -m saga_testenv status

.PHONY: stack-build
stack-build: $(STAMP) ## build etcd and kube-apiserver, fetch the Kafka jars, into the cache (only what is missing)
	$(PY) -m saga_testenv build

.PHONY: clean-cache
clean-cache: $(STAMP) ## delete the cached binaries of the pinned versions (the next run rebuilds them)
	rm -rf "$$($(PY) -m saga_testenv cache-dir)"

.PHONY: test
test: $(STAMP) ## run the whole test suite against the real local stack (started if needed)
	$(PY) -m saga_testenv build
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

.PHONY: demo
demo: $(STAMP) ## the buy-video sagas end to end on the local stack: kubectl get sagas as they move, then the ledgers
	$(PY) -m saga_testenv build
	$(PY) -m saga_harness.demo

.PHONY: run
run: $(STAMP) ## the operator and the buy-video participants in the foreground against `make up`'s stack, on free ports; Ctrl-C stops them
	$(PY) -m saga_harness.run $(RUN_ARGS)

.PHONY: generate
generate: $(STAMP) ## regenerate the CRDs, the admission policies, the protocol JSON Schema, the step lifecycle diagram and the settings table from their sources
	$(PY) -m saga_operator.crd > crds/saga.dev_sagas.yaml
	$(PY) -m saga_operator.crd --participants > crds/saga.dev_participants.yaml
	$(PY) -m saga_operator.crd --templates > crds/saga.dev_sagatemplates.yaml
	$(PY) -m saga_operator.crd --finalizer-policy > crds/saga.dev_finalizer-policy.yaml
	$(PY) -m saga_operator.admission > crds/saga.dev_admission-policies.yaml
	cp crds/saga.dev_sagas.yaml crds/saga.dev_participants.yaml crds/saga.dev_sagatemplates.yaml manifests/base/crds/
	cp crds/saga.dev_admission-policies.yaml manifests/admission/
	cp crds/saga.dev_finalizer-policy.yaml manifests/admission/finalizer/
	$(PY) -m saga_protocol.schema > docs/protocol.schema.json
	$(PY) -m saga_operator.domain.lifecycle --mermaid --into docs/architecture.md
	$(PY) -m saga_operator.config --update docs/operations.md

.PHONY: lint
lint: $(STAMP) ## ruff (lint and format), the import contracts (pyproject.toml), mypy strict over the code and the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/mypy operator protocol participants testenv harness tests

# The tests that need no stack: tests/domain and tests/unit, without the `stack` marker. The testenv plugin is not
# loaded, so a test there that asks for the stack fails instead of starting one.
PURE_TESTS := tests/domain tests/unit

.PHONY: check
check: lint ## the fast loop, no stack built or started: lint, then the pure tests (tests/domain, tests/unit)
	$(PY) -m pytest -p no:saga_testenv.pytest_plugin -m 'not stack' -q $(PURE_TESTS)

# ---- container image and kind (docs/kind.md) --------------------------------------------------
# Needs Docker (a running engine), kind and kubectl; none of them runs on the CI machines, where the
# manifests are checked against the local stack instead (tests/deploy).
IMAGE ?= saga-operator:dev
DOCKER ?= docker
KIND ?= kind
KUBECTL ?= kubectl
KIND_CLUSTER ?= saga
# e.g. kindest/node:v1.35.0; empty: the node image of your kind release
KIND_NODE_IMAGE ?=
KIND_CONTEXT := kind-$(KIND_CLUSTER)
KCTL := $(KUBECTL) --context $(KIND_CONTEXT)
DEMO_TIMEOUT ?= 300

.PHONY: image
image: ## build the container image saga-operator:dev (operator and participants) with Docker
	@command -v $(DOCKER) >/dev/null 2>&1 || { \
	  echo "make image: '$(DOCKER)' is not installed. Install Docker (https://docs.docker.com/get-docker/)." >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "make image: no Docker engine answers ('$(DOCKER) info' failed). Start Docker, or run where it runs." >&2; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build --tag $(IMAGE) .

.PHONY: kind-up
kind-up: image ## create the kind cluster, load the image, deploy Kafka, the operator and the participants
	@for tool in $(KIND) $(KUBECTL) openssl; do command -v $$tool >/dev/null 2>&1 || { \
	  echo "make kind-up: '$$tool' is not installed (see docs/kind.md)." >&2; exit 1; }; done
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) exists; reusing it"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config kind/cluster.yaml \
	    $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE)) --wait 120s; \
	fi
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	@# Kafka's TLS certificate, CA and SCRAM passwords: made here with openssl, once (kept if present)
	$(KCTL) apply -f manifests/base/namespace.yaml
	KUBECTL="$(KCTL)" bash kind/kafka-secrets.sh
	@# the tag stays :dev: on a second kind-up, restart the pods so that they run the image just loaded
	@if $(KCTL) -n saga-system get deployment/saga-operator >/dev/null 2>&1; then again=1; else again=0; fi; \
	echo "$(KCTL) apply -k manifests/overlays/kind"; \
	$(KCTL) apply -k manifests/overlays/kind || exit 1; \
	$(KCTL) -n saga-system get secret saga-operator-status-key >/dev/null 2>&1 || \
	  $(KCTL) -n saga-system create secret generic saga-operator-status-key \
	    --from-literal=key="$$(head -c 48 /dev/urandom | base64 | tr -d '\n')" || exit 1; \
	$(KCTL) wait --for condition=Established --timeout=60s crd/sagas.saga.dev crd/participants.saga.dev || exit 1; \
	echo "$(KCTL) apply -k manifests/participants/registration"; \
	$(KCTL) apply -k manifests/participants/registration || exit 1; \
	echo "$(KCTL) apply -k manifests/admission"; \
	$(KCTL) apply -k manifests/admission || exit 1; \
	echo "$(KCTL) apply -k manifests/admission/finalizer"; \
	$(KCTL) apply -k manifests/admission/finalizer || echo "make kind-up: this cluster has no MutatingAdmissionPolicy v1 (Kubernetes < 1.36?); skipped it: the operator adds the finalizer itself, one more write per saga"; \
	if [ $$again = 1 ]; then \
	  $(KCTL) -n saga-system rollout restart deployment/saga-operator deployment/videos deployment/users deployment/agents \
	    || exit 1; \
	fi
	$(KCTL) -n saga-system rollout status statefulset/kafka --timeout=300s
	$(KCTL) -n saga-system wait --for condition=Complete --timeout=300s job/kafka-topics
	$(KCTL) -n saga-system wait --for condition=Complete --timeout=300s job/kafka-access
	$(KCTL) -n saga-system rollout status deployment/saga-operator --timeout=300s
	$(KCTL) -n saga-system rollout status deployment/videos --timeout=300s
	$(KCTL) -n saga-system rollout status deployment/users --timeout=300s
	$(KCTL) -n saga-system rollout status deployment/agents --timeout=300s
	$(KCTL) -n saga-system get pods
	@echo "saga-operator is up in kind cluster $(KIND_CLUSTER); next: make kind-demo"

.PHONY: kind-demo
kind-demo: ## apply examples/*.yaml to the kind cluster and watch the sagas until all have finished
	$(KCTL) apply -f examples/
	@deadline=$$(( $$(date +%s) + $(DEMO_TIMEOUT) )); \
	while :; do \
	  if [ -t 1 ]; then clear; fi; \
	  $(KCTL) get sagas -l app.kubernetes.io/part-of=saga-demo; \
	  phases=$$($(KCTL) get sagas -l app.kubernetes.io/part-of=saga-demo \
	    -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}'); \
	  running=$$(printf '%s\n' "$$phases" | grep -cvE '^(Succeeded|Compensated|Failed)$$' || true); \
	  if [ "$$running" = 0 ]; then break; fi; \
	  if [ $$(date +%s) -ge $$deadline ]; then \
	    echo "make kind-demo: sagas still running after $(DEMO_TIMEOUT)s (see docs/kind.md, Troubleshooting)" >&2; exit 1; fi; \
	  sleep 2; \
	done
	$(KCTL) get sagas -l app.kubernetes.io/part-of=saga-demo -o wide
	$(KCTL) get events --field-selector involvedObject.kind=Saga --sort-by=.metadata.creationTimestamp

.PHONY: kind-down
kind-down: ## delete the kind cluster (and everything in it)
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# ---- chaos (docs/chaos.md) ----------------------------------------------------------------------------
CHAOS_SAGAS ?= $(or $(N),300)

.PHONY: chaos
chaos: $(STAMP) ## N sagas (default 300) while everything breaks, then audit the books; SEED=n replays a mix
	$(PY) -m saga_testenv build
	$(PY) -m saga_harness.chaos --sagas $(CHAOS_SAGAS) $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

ISOLATION_SAGAS ?= $(or $(N),100)

.PHONY: isolation
isolation: $(STAMP) ## issue 10's acceptance: N ordinary sagas (default 100) alone, then beside every bad case; the table, the books, the times
	$(PY) -m saga_testenv build
	$(PY) -m saga_harness.isolation --sagas $(ISOLATION_SAGAS) $(ISOLATION_ARGS)

.PHONY: bench
bench: $(STAMP) ## benchmark the operator against its floor; prints the figures, JSON in harness/bench-results/ (BENCH_ARGS="--sagas 1000 --concurrency 100 --scale-sagas 5000")
	$(PY) -m saga_harness.bench $(BENCH_ARGS)
