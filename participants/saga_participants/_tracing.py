"""A span per handled command, in the trace the command's headers name (docs/protocol.md §5.1).

With a tracer provider: every command that decodes gets a CONSUMER span `<participant> <handler>`, child of
the command's `traceparent` (the operator's span of that attempt; a command without one starts a trace of its
own), current while the handler runs (so a handler's own spans nest under it); the reply carries that span's
context. Without one (no OTEL_* configured): nothing is computed, and the reply carries the command's
trace-context headers unchanged, so it stays in the saga's trace all the same.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga_plumbing.tracing import tracer_provider_from_env
from saga_protocol import Command, Outcome, Reply
from saga_protocol.tracecontext import WireHeaders, trace_carrier

log = logging.getLogger(__name__)

SCOPE: Final = "saga_participants"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


@functools.cache
def provider_from_env(default_service_name: str) -> TracerProvider | None:
    """The process's provider from OTEL_* (one per process, however many participants it runs; the first
    participant's name is `service.name` unless OTEL_SERVICE_NAME says). Also the global one, if none is set,
    so that a handler's own OpenTelemetry spans nest under the participant's."""
    provider = tracer_provider_from_env(default_service_name)
    if provider is not None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return provider


class Handling:
    """One command being handled: what its reply carries, and the span (None when tracing is off)."""

    def __init__(self, span: Span | None, passed_through: Mapping[str, str]) -> None:
        self.span = span
        self._passed_through = passed_through

    def reply_trace(self) -> Mapping[str, str]:
        """The trace context for the reply's headers: this span's, else the command's own, unchanged."""
        if self.span is None:
            return self._passed_through
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self.span))
        return carrier

    def answered(self, reply: Reply, refusal: str | None = None) -> None:
        """The reply decided: its outcome on the span (an error status for failed and error)."""
        span = self.span
        if span is None:
            return
        span.set_attribute("saga.step.outcome", reply.outcome.value)
        span.set_attribute("saga.reply.duplicate", reply.duplicate)
        if refusal is not None:
            span.set_attribute("saga.refusal", refusal)
        if reply.error is not None:
            span.set_attribute("saga.error.reason", reply.error.reason)
        if reply.outcome is not Outcome.SUCCEEDED:
            reason = reply.error.reason if reply.error is not None else reply.outcome.value
            span.set_status(Status(StatusCode.ERROR, reason))

    def set_aside(self, reason: str) -> None:
        """Dead-lettered (a refusal, an undeliverable reply): no reply, or not only one."""
        if self.span is not None:
            self.span.set_attribute("saga.dead_letter.reason", reason)
            self.span.set_status(Status(StatusCode.ERROR, reason))


class ParticipantTracing:
    def __init__(self, participant: str, provider: TracerProvider | None) -> None:
        self.participant = participant
        self.enabled = provider is not None
        self._tracer = provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()

    @contextlib.contextmanager
    def handling(self, command: Command, headers: WireHeaders | None, topic: str) -> Iterator[Handling]:
        carrier = trace_carrier(headers)
        if not self.enabled:
            yield Handling(None, carrier)
            return
        attributes: dict[str, str | int] = {
            "saga.uid": command.saga_uid,
            "saga.namespace": command.saga_namespace,
            "saga.name": command.saga_name,
            "saga.step": command.step,
            "saga.step.kind": command.kind.value,
            "saga.step.attempt": command.attempt,
            "saga.participant": self.participant,
            "saga.action": command.action,
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.message.id": command.message_id,
        }
        with self._tracer.start_as_current_span(
            f"{self.participant} {command.action}",
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield Handling(span, carrier)
