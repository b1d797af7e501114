"""The operator's spans, from the coordinator's log writes, against the in-memory fakes (fakes.py) and the SDK's
in-memory exporter; and the pure parts: ids derived from the saga, `ended_attempts`, the trace-context headers.
tests/e2e/test_tracing.py runs the same on the real stack, with the participants' spans."""

from __future__ import annotations

import uuid

import pytest
from fakes import FakeSender, FakeStore
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode

from saga_operator.adapters.kube import SagaRef
from saga_operator.domain.model import Phase, SagaSpec, StepSpec
from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics
from saga_operator.runtime.tracing import SagaTracing, attempt_span_id, root_span_id, trace_id_of
from saga_plumbing.tracing import PlannedIds, TracingSettingsError, exporters_wanted, tracer_provider_from_env
from saga_protocol import (
    TRACEPARENT,
    TRACESTATE,
    Command,
    ErrorInfo,
    Outcome,
    answer,
    decode_command,
    encode_command,
    reply_topic,
    trace_carrier,
    trace_headers,
)
from saga_protocol.tracecontext import traceparent_problem

SPEC = SagaSpec(
    steps=[
        StepSpec(name="reserve", participant="stock", action="reserve", compensation="release"),
        StepSpec(name="charge", participant="payments", action="charge", compensation="refund"),
    ],
)
PARTICIPANTS = {step.name: step.participant for step in SPEC.steps}
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Traced:
    def __init__(self, sampler: ParentBased | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(id_generator=PlannedIds(), sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.store = FakeStore()
        self.sender = FakeSender(self.store)
        self.coordinator = Coordinator(
            self.store, self.sender.send, self.sender.ensure_topics, Metrics(), tracing=SagaTracing(provider)
        )

    async def start(self, name: str) -> SagaRef:
        ref = self.store.create(name, SPEC)
        await self.coordinator.observe(self.store.body(ref), "ADDED")
        return ref

    async def reply(self, command: Command, outcome: Outcome = Outcome.SUCCEEDED) -> None:
        error = ErrorInfo(reason="Declined") if outcome is not Outcome.SUCCEEDED else None
        reply = answer(command, PARTICIPANTS[command.step], outcome, error=error)
        participant_span = "00-" + uuid.UUID(command.saga_uid).hex + "-" + "ab" * 8 + "-01"
        ignored = await self.coordinator.apply_reply(
            reply,
            received=0.0,
            topic=reply_topic(reply.participant),
            key=reply.saga_uid.encode(),
            trace={TRACEPARENT: participant_span},
        )
        assert ignored == []

    def spans(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: (s.start_time or 0, s.name))


async def test_a_compensated_saga_is_one_trace_of_its_attempts_in_order() -> None:
    traced = Traced()
    ref = await traced.start("order-1")
    await traced.reply(traced.sender.sent[0].command)  # reserve succeeds
    await traced.reply(traced.sender.sent[1].command, Outcome.FAILED)  # charge refused
    await traced.reply(traced.sender.sent[2].command)  # release succeeds
    assert traced.coordinator.sagas[ref.uid].status.phase == Phase.COMPENSATED

    spans = traced.spans()
    assert {s.context.trace_id for s in spans if s.context} == {uuid.UUID(ref.uid).int}
    root = next(s for s in spans if s.parent is None)
    assert root.name == "saga shop/order-1" and root.context and root.context.span_id == root_span_id(ref.uid)
    steps = [s for s in spans if s is not root]
    assert [(s.name, (s.attributes or {})["saga.step.outcome"]) for s in steps] == [
        ("step reserve", "succeeded"),
        ("step charge", "failed"),
        ("compensate reserve", "succeeded"),
    ]
    assert all(s.parent and s.parent.span_id == root.context.span_id for s in steps)
    assert steps[1].status.status_code == StatusCode.ERROR
    # each attempt's span is the one its command's traceparent named, and links the participant's span
    for span, sent in zip(steps, traced.sender.sent, strict=True):
        assert span.context and span.context.span_id == attempt_span_id(sent.command.message_id)
        assert sent.trace is not None
        assert sent.trace[TRACEPARENT] == f"00-{trace_id_of(ref.uid):032x}-{span.context.span_id:016x}-01"
        assert [link.context.span_id for link in span.links] == [int("ab" * 8, 16)]


async def test_the_last_reply_records_the_last_attempt_and_the_saga() -> None:
    traced = Traced()
    await traced.start("order-2")
    await traced.reply(traced.sender.sent[0].command)
    await traced.reply(traced.sender.sent[1].command)
    assert [s.name for s in traced.spans()] == ["saga shop/order-2", "step reserve", "step charge"]


async def test_with_tracing_off_commands_carry_no_trace_context() -> None:
    store = FakeStore()
    sender = FakeSender(store)
    coordinator = Coordinator(store, sender.send, sender.ensure_topics, Metrics())
    ref = store.create("order-3", SPEC)
    await coordinator.observe(store.body(ref), "ADDED")
    assert [s.trace for s in sender.sent] == [None]


async def test_a_saga_not_sampled_is_not_recorded_and_says_so_downstream() -> None:
    traced = Traced(sampler=ParentBased(ALWAYS_OFF))
    await traced.start("order-4")
    await traced.reply(traced.sender.sent[0].command)
    assert traced.exporter.get_finished_spans() == ()
    trace = traced.sender.sent[1].trace
    assert trace is not None and trace[TRACEPARENT].endswith("-00")


# ---- the headers ---------------------------------------------------------------------------------


def test_trace_headers_round_trip_through_a_command_record() -> None:
    command = Command(
        message_id="m",
        saga_uid="u",
        saga_namespace="default",
        saga_name="s",
        step="reserve",
        kind="action",
        action="reserve",
        attempt=1,
        idempotency_key="u/reserve",
        reply_topic="saga.replies.stock",
        sent_at="2026-01-01T00:00:00Z",
    )
    _, value, headers = encode_command(command, trace={TRACEPARENT: VALID, TRACESTATE: "congo=t61rcWkgMzE"})
    assert [name for name, _ in headers][-2:] == [TRACEPARENT, TRACESTATE]
    assert trace_carrier(headers) == {TRACEPARENT: VALID, TRACESTATE: "congo=t61rcWkgMzE"}
    assert decode_command(value, headers) == command  # the body is all a reader needs
    _, _, plain = encode_command(command)
    assert trace_carrier(plain) == {} and len(plain) == 7


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        VALID.upper(),
        "ff" + VALID[2:],
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        VALID + "-extra",
    ],
)
def test_a_traceparent_that_is_not_w3c_is_dropped(value: str) -> None:
    assert traceparent_problem(value) is not None
    assert trace_carrier([(TRACEPARENT, value.encode()), (TRACESTATE, b"a=b")]) == {}
    assert trace_headers({TRACEPARENT: value}) == []


def test_a_later_version_keeps_what_it_shares_with_version_00() -> None:
    later = "01" + VALID[2:] + "-what-comes-later"
    assert traceparent_problem(later) is None


def test_the_first_header_counts_and_odd_values_are_dropped_not_raised() -> None:
    assert trace_carrier([(TRACEPARENT, VALID.encode()), (TRACEPARENT, b"other")]) == {TRACEPARENT: VALID}
    assert trace_carrier([(TRACEPARENT, b"\xff\xfe"), (TRACEPARENT, VALID.encode())]) == {}
    assert trace_carrier([(TRACEPARENT, None)]) == {}
    assert trace_carrier([(TRACESTATE, b"a=b")]) == {}  # a state without a parent means nothing
    assert trace_carrier([(TRACEPARENT, VALID.encode()), (TRACESTATE, b"x" * 513)]) == {TRACEPARENT: VALID}
    assert trace_carrier(None) == {}


def test_ids_are_derived_from_the_saga() -> None:
    uid = "6f1c1f43-4a84-4e8e-9d0f-0d3c5a0f7e21"
    assert trace_id_of(uid) == 0x6F1C1F434A844E8E9D0F0D3C5A0F7E21
    assert trace_id_of("not-a-uuid") == trace_id_of("not-a-uuid") != 0
    assert root_span_id(uid) != attempt_span_id(uid)


# ---- configured by OTEL_* only -------------------------------------------------------------------


def test_tracing_is_off_unless_otel_variables_ask_for_it() -> None:
    assert exporters_wanted({}) == []
    assert tracer_provider_from_env("x", {}) is None
    assert exporters_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert exporters_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert exporters_wanted({"OTEL_TRACES_EXPORTER": "console,otlp"}) == ["console", "otlp"]
    assert exporters_wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == []
    assert exporters_wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []
    with pytest.raises(TracingSettingsError, match="OTEL_TRACES_EXPORTER names zipkin"):
        exporters_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingSettingsError, match="http/protobuf"):
        tracer_provider_from_env("x", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_a_configured_provider_names_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = tracer_provider_from_env("saga-operator", {"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "saga-operator"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-sec")
    named = tracer_provider_from_env("saga-operator", {"OTEL_TRACES_EXPORTER": "console"})
    assert named is not None and named.resource.attributes["service.name"] == "payments-sec"
    named.shutdown()
