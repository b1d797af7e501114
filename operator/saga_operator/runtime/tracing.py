"""The operator's OpenTelemetry spans: one trace per saga, a span per step attempt and per compensation attempt.

A saga lives longer than any process: it survives operator restarts, and its log is `.status`, not memory.
So its spans are made from the log, never held open in memory (docs/architecture.md, "Tracing"):

* the trace id is the saga's uid (its 128 bits; a uid that is no UUID is hashed), so every span of a saga,
  written by any operator process, lands in one trace, and `kubectl get saga -o jsonpath={.metadata.uid}`
  (dashes removed) finds it;
* the saga's root span, `saga <namespace>/<name>`, has an id derived from the uid; it is exported once the
  saga first reaches a terminal phase, from `status.startedAt` to `status.finishedAt`;
* an attempt's span id is derived from its command id (itself deterministic per saga, step, kind and attempt),
  so the command carries its span's context (`traceparent`) before the span exists, a re-send after a restart
  carries the same one, and the participant's span is a child of the attempt's span;
* the attempt's span, `step <step>` or `compensate <step>`, is recorded when the log says the attempt ended
  (its reply applied, its timeout, the undo overtaking it), from the command's `dispatchedAt` (a compensation's
  `compensationDispatchedAt`) to that transition.

`ended_attempts` finds those ends by comparing the status before and after each transition (the coordinator
calls `record` whether the new status is written at once or held to be written behind, so an attempt that
opens and ends inside one coalescing window has its span too): pure, over the log. With
tracing off (no provider) nothing here computes anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from saga_operator.adapters.kube import SagaRef
from saga_operator.domain.events import Event, ReplyReceived
from saga_operator.domain.model import (
    TERMINAL_PHASES,
    ErrorRecord,
    Phase,
    SagaSpec,
    SagaStatus,
    StepSpec,
    StepState,
    StepStatus,
)
from saga_plumbing.tracing import planned
from saga_protocol import CommandKind, command_topic

log = logging.getLogger(__name__)

SCOPE: Final = "saga_operator"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
#: The phases whose root span is an error: a person must act (Failed) or nothing ran (Rejected).
_ERROR_PHASES: Final = frozenset({Phase.FAILED, Phase.REJECTED})


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") or 1


def trace_id_of(uid: str) -> int:
    """The saga's trace id: its uid's 128 bits (Kubernetes uids are random UUIDs), else a hash of the uid."""
    try:
        value = uuid.UUID(uid).int
    except ValueError:
        value = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:16], "big")
    return value or 1


def root_span_id(uid: str) -> int:
    return _hash64(f"saga/{uid}")


def attempt_span_id(command_id: str) -> int:
    """The span id of the attempt whose command has this id (the same for every send of the attempt)."""
    return _hash64(f"command/{command_id}")


@dataclass(frozen=True)
class Attempt:
    """An attempt in flight, as the log records it: its command sent, its reply awaited."""

    step: str
    kind: CommandKind
    attempt: int
    command_id: str
    dispatched_at: datetime


@dataclass(frozen=True)
class EndedAttempt:
    attempt: Attempt
    outcome: str  # succeeded | failed (a business refusal) | error (an error reply, a timeout) | interrupted
    error: ErrorRecord | None


def open_attempt(record: StepStatus, phase: Phase) -> Attempt | None:
    """The attempt of this step whose reply the log waits for: a command recorded, its deadline set, the saga
    not finished. (A compensation past its attempt limit stays Compensating without a deadline: not awaited.)"""
    if phase in TERMINAL_PHASES or record.deadline is None or record.command_id is None:
        return None
    if record.state == StepState.DISPATCHED and record.dispatched_at is not None:
        return Attempt(record.name, CommandKind.ACTION, record.attempt, record.command_id, record.dispatched_at)
    if record.state == StepState.COMPENSATING and record.compensation_dispatched_at is not None:
        return Attempt(
            record.name,
            CommandKind.COMPENSATION,
            record.compensation_attempt,
            record.command_id,
            record.compensation_dispatched_at,
        )
    return None


def _outcome(attempt: Attempt, after: StepStatus | None) -> tuple[str, ErrorRecord | None]:
    if after is None:
        return "interrupted", None
    state = after.state
    if attempt.kind == CommandKind.ACTION:
        if state == StepState.SUCCEEDED:
            return "succeeded", None
        if state == StepState.REFUSED:
            return "failed", after.error
        if state in (StepState.RETRYING, StepState.ABANDONED):
            return "error", after.error
        return "interrupted", None  # undone while in flight (Compensating), or the saga ended around it
    if state == StepState.COMPENSATED:
        return "succeeded", None
    if state in (StepState.COMPENSATION_RETRYING, StepState.COMPENSATING):
        # Compensating: past the attempt limit (or a command refused), the saga Failed; its error says why.
        return ("error", after.error) if after.error is not None else ("interrupted", None)
    return "interrupted", None


def ended_attempts(before: SagaStatus, after: SagaStatus) -> list[EndedAttempt]:
    """The attempts in flight in `before` that `after` no longer waits for, in step order."""
    still = {r.name: open_attempt(r, after.phase) for r in after.steps}
    ended: list[EndedAttempt] = []
    for record in before.steps:
        attempt = open_attempt(record, before.phase)
        if attempt is None or still.get(record.name) == attempt:
            continue
        outcome, error = _outcome(attempt, after.step(record.name))
        ended.append(EndedAttempt(attempt, outcome, error))
    return ended


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


# The trace context of the reply being applied (its participant's span), for a link from the attempt's span.
_REPLY_TRACE: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "saga_reply_trace", default=None
)


class SagaTracing:
    """The operator's spans. `SagaTracing(None)`: tracing off, every method returns at once."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer(SCOPE) if provider is not None else trace.NoOpTracer()

    # ---- what a command carries ---------------------------------------------------------------

    def _flags(self, trace_id: int) -> TraceFlags:
        """The saga's sampling decision, the same in every process and for every span of the saga: the sampler
        asked about the root span (OTEL_TRACES_SAMPLER; a ratio sampler decides by the trace id)."""
        assert self.provider is not None
        decision = self.provider.sampler.should_sample(None, trace_id, "saga").decision
        sampled = decision in (Decision.RECORD_AND_SAMPLE,)
        return TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)

    def command_trace(self, ref: SagaRef, command_id: str) -> dict[str, str] | None:
        """The `traceparent` (and `tracestate`) of the attempt whose command has this id; None when off."""
        if not self.enabled:
            return None
        trace_id = trace_id_of(ref.uid)
        context = SpanContext(trace_id, attempt_span_id(command_id), is_remote=False, trace_flags=self._flags(trace_id))
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(context)))
        return carrier

    @contextlib.contextmanager
    def replying(self, carrier: Mapping[str, str] | None) -> Iterator[None]:
        """While a reply is applied: its trace context, linked from the span of the attempt it ends."""
        token = _REPLY_TRACE.set(carrier if self.enabled else None)
        try:
            yield
        finally:
            _REPLY_TRACE.reset(token)

    # ---- spans from the log -------------------------------------------------------------------

    def record(
        self,
        ref: SagaRef,
        spec: SagaSpec | None,
        before: SagaStatus,
        after: SagaStatus,
        event: Event | None,
        now: datetime,
    ) -> None:
        """After a transition from `before` to `after` (written, or held in memory to be written behind): the
        spans of the attempts it ended, then the saga's own when it reached a terminal phase. Never raises
        (tracing must not stop a saga)."""
        if not self.enabled:
            return
        try:
            self._record(ref, spec, before, after, event, now)
        except Exception:
            log.warning("spans of saga %s/%s not recorded", ref.namespace, ref.name, exc_info=True)

    def _record(
        self,
        ref: SagaRef,
        spec: SagaSpec | None,
        before: SagaStatus,
        after: SagaStatus,
        event: Event | None,
        now: datetime,
    ) -> None:
        trace_id = trace_id_of(ref.uid)
        name = f"saga {ref.namespace}/{ref.name}"
        flags = self._flags(trace_id)
        root = SpanContext(trace_id, root_span_id(ref.uid), is_remote=True, trace_flags=flags)
        parent = trace.set_span_in_context(NonRecordingSpan(root), Context())
        steps = {s.name: s for s in spec.steps} if spec is not None else {}
        for ended in ended_attempts(before, after):
            self._attempt_span(ref, steps.get(ended.attempt.step), ended, event, parent, now)
        if after.phase in TERMINAL_PHASES and before.phase not in TERMINAL_PHASES:
            self._saga_span(ref, name, after, parent, trace_id, now)

    def _attempt_span(
        self,
        ref: SagaRef,
        step: StepSpec | None,
        ended: EndedAttempt,
        event: Event | None,
        parent: Context,
        now: datetime,
    ) -> None:
        attempt = ended.attempt
        participant = step.participant if step is not None else None
        action = (step.action if attempt.kind == CommandKind.ACTION else step.compensation) if step else None
        verb = "step" if attempt.kind == CommandKind.ACTION else "compensate"
        attributes: dict[str, str | int | bool] = {
            "saga.uid": ref.uid,
            "saga.namespace": ref.namespace,
            "saga.name": ref.name,
            "saga.step": attempt.step,
            "saga.step.kind": attempt.kind.value,
            "saga.step.attempt": attempt.attempt,
            "saga.step.outcome": ended.outcome,
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.message.id": attempt.command_id,
        }
        if participant is not None:
            attributes["saga.participant"] = participant
            attributes["messaging.destination.name"] = command_topic(participant)
        if action is not None:
            attributes["saga.action"] = action
        if ended.error is not None:
            attributes["saga.error.reason"] = ended.error.reason
        links: list[Link] = []
        if isinstance(event, ReplyReceived) and (event.reply.step, event.reply.kind) == (attempt.step, attempt.kind):
            attributes["saga.reply.attempt"] = event.reply.attempt
            attributes["saga.reply.duplicate"] = event.reply.duplicate
            reply_context = trace.get_current_span(_PROPAGATOR.extract(_REPLY_TRACE.get() or {})).get_span_context()
            if reply_context.is_valid:
                links.append(Link(reply_context, {"saga.link": "reply"}))
        end = event.now if event is not None else now
        with planned(span_id=attempt_span_id(attempt.command_id)):
            span = self._tracer.start_span(
                f"{verb} {attempt.step}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes=attributes,
                links=links,
                start_time=_ns(attempt.dispatched_at),
            )
        if ended.outcome in ("failed", "error"):
            error = ended.error
            span.set_status(Status(StatusCode.ERROR, f"{error.reason}: {error.message}" if error else ended.outcome))
        span.end(end_time=max(_ns(end), _ns(attempt.dispatched_at)))

    def _saga_span(
        self, ref: SagaRef, name: str, after: SagaStatus, parent: Context, trace_id: int, now: datetime
    ) -> None:
        finished = after.finished_at or now
        started = after.started_at or finished
        attributes: dict[str, str | int] = {
            "saga.uid": ref.uid,
            "saga.namespace": ref.namespace,
            "saga.name": ref.name,
            "saga.phase": after.phase.value,
            "saga.steps": len(after.steps),
        }
        if after.reason:
            attributes["saga.reason"] = after.reason
        if after.retries_granted == 0:
            # The root, once: a saga Failed, retried by a person and ended again does not export it twice.
            with planned(trace_id=trace_id, span_id=root_span_id(ref.uid)):
                span = self._tracer.start_span(
                    name, context=Context(), kind=SpanKind.INTERNAL, attributes=attributes, start_time=_ns(started)
                )
        else:
            attributes["saga.retries_granted"] = after.retries_granted
            span = self._tracer.start_span(
                f"{name} ended after retry {after.retries_granted}",
                context=parent,
                attributes=attributes,
                start_time=_ns(finished),
            )
        if after.phase in _ERROR_PHASES:
            span.set_status(Status(StatusCode.ERROR, after.message or after.phase.value))
        span.end(end_time=max(_ns(finished), _ns(started)))
