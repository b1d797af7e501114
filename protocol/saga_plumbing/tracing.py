"""OpenTelemetry set-up shared by the operator and the participant SDK: off unless configured.

Configured only through OpenTelemetry's own environment variables (docs/operations.md, "Tracing"):

* `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`: off;
* `OTEL_TRACES_EXPORTER=otlp` (or `console`, or both, comma-separated): on, with that exporter;
* `OTEL_TRACES_EXPORTER` unset: on with OTLP exactly when `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. (The OpenTelemetry specification defaults the exporter to
  OTLP on localhost; here nothing is exported, and nothing is computed, until someone names where to.)

The OTLP exporter is OTLP/HTTP with protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`, the default);
it reads its endpoint, headers, timeout, compression and certificates from `OTEL_EXPORTER_OTLP_*` itself. The
resource comes from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the sampler from
`OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, the batching from `OTEL_BSP_*`: all the SDK's own.

`PlannedIds` is the provider's id generator: random ids, except inside `planned(...)`, where the next span
gets the ids given. The operator uses it to give a saga's spans ids derived from the saga (its uid, a
command id), so that a saga is one trace across operator restarts (docs/architecture.md, "Tracing").
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

EXPORTERS: Final = ("otlp", "console", "none")
_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_PROTOCOLS: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


class TracingSettingsError(ValueError):
    """OTEL_* variables that ask for what is not installed or does not exist (the message names the variable)."""


def exporters_wanted(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for; empty: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        return ["otlp"] if any(environ.get(name, "").strip() for name in _ENDPOINTS) else []
    wanted = [part.strip() for part in named.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in EXPORTERS]
    if unknown:
        raise TracingSettingsError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this build has {', '.join(EXPORTERS)}"
        )
    return [] if "none" in wanted else list(dict.fromkeys(wanted))


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    protocol = next((environ[v].strip() for v in _PROTOCOLS if environ.get(v, "").strip()), "http/protobuf")
    if protocol != "http/protobuf":
        raise TracingSettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}: this build exports OTLP over HTTP (http/protobuf) only"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer_provider_from_env(
    default_service_name: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """A tracer provider exporting as the OTEL_* variables say, or None when they ask for no tracing.

    `default_service_name` is `service.name` unless `OTEL_SERVICE_NAME` (or `OTEL_RESOURCE_ATTRIBUTES`) names
    one. The provider flushes its spans when the process exits. `environ` (default: the process's) decides
    whether to trace and how to export; the SDK's own readers (resource, sampler, exporter options) read the
    process's environment. Raises TracingSettingsError."""
    env = os.environ if environ is None else environ
    wanted = exporters_wanted(env)
    if not wanted:
        return None
    exporters = [_exporter(name, env) for name in wanted]
    # From OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the process's environment); the SDK's placeholder
    # name (unknown_service:python) gives way to ours.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource, id_generator=PlannedIds())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# The ids the next span started in this context gets: (trace id or None, span id or None).
_PLANNED: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "saga_planned_ids", default=(None, None)
)


class PlannedIds(IdGenerator):
    """Random ids (the SDK's default), except for a span started inside `planned(...)`."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return _PLANNED.get()[1] or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return _PLANNED.get()[0] or self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return False  # derived from a saga's uid: W3C's "random" flag is not set


@contextlib.contextmanager
def planned(*, trace_id: int | None = None, span_id: int | None = None) -> Iterator[None]:
    """Within this block, a span started with a `PlannedIds` provider gets these ids (a span with a parent
    takes its trace id from the parent, as always). Zero is no id: the random one is used."""
    token = _PLANNED.set((trace_id or None, span_id or None))
    try:
        yield
    finally:
        _PLANNED.reset(token)
