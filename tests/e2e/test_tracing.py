"""Tracing end to end: the operator and the participants as processes, configured only through OTEL_*, exporting
OTLP/HTTP to a receiver this test runs; real sagas through the real broker.

What must hold: one trace per saga, whose id is the saga's uid; the saga's root span; a span per step attempt
and per compensation, children of the root, in the order they ran (actions, then compensations in reverse);
each participant's span a child of the operator's span of the attempt it handled, in the same trace; and all
of it across an operator restart in the middle of a saga.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from saga_harness.chaos.world import ChaosWorld
from saga_testenv.stack import StackEndpoints

pytestmark = pytest.mark.stack

#: carol (2500 cents) buys v-9 through closed-agency, which refuses credits: debit, then both undone.
COMPENSATED = {"buyer": "carol", "video": "v-9", "price": 1500, "agent": "closed-agency"}
SUCCEEDS = {"buyer": "alice", "video": "v-1", "price": 500, "agent": "bob-agency"}
SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    start: int
    end: int
    attributes: dict[str, Any]
    error: bool
    links: tuple[str, ...]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf), keeping every span it was sent."""

    spans: list[ExportedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accept(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found: list[ExportedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        ExportedSpan(
                            service=str(resource.get("service.name", "")),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == 2,
                            links=tuple(link.span_id.hex() for link in span.links),
                        )
                    )
        with self.lock:
            self.spans.extend(found)

    def of_trace(self, trace_id: str) -> list[ExportedSpan]:
        with self.lock:
            return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: (s.start, s.name))

    def wait(self, trace_id: str, count: int, timeout: float = 30.0) -> list[ExportedSpan]:
        """The trace's spans once there are `count` and no more came for a second."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            spans = self.of_trace(trace_id)
            if len(spans) != seen:
                seen, quiet_since = len(spans), time.monotonic()
            elif len(spans) >= count and time.monotonic() - quiet_since > 1.0:
                return spans
            time.sleep(0.1)
        return self.of_trace(trace_id)


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            received.accept(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def traced(stack: StackEndpoints, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosWorld]:
    """A world of its own (namespace, participant names, topics) whose processes export their spans to the
    receiver: configured with OpenTelemetry's own variables and nothing else."""
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export soon after a span ends
        "NO_PROXY": "127.0.0.1",
    }
    world = ChaosWorld(stack, tmp_path_factory.mktemp("traced"), operator_env=otel)
    for service in world.participants.values():
        service.env.update(otel)
    with world:
        world.start()
        yield world


def _uid_trace(body: dict[str, Any]) -> str:
    return str(body["metadata"]["uid"]).replace("-", "")


def _operator_spans(spans: list[ExportedSpan]) -> list[ExportedSpan]:
    return [s for s in spans if s.service == "saga-operator"]


def _tree(spans: list[ExportedSpan]) -> str:
    """The trace as a person reads it: each span under its parent, in start order."""
    by_parent: dict[str, list[ExportedSpan]] = {}
    ids = {s.span_id for s in spans}
    for span in spans:
        by_parent.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start):
            outcome = span.attributes.get("saga.step.outcome") or span.attributes.get("saga.phase", "")
            lines.append(
                f"{'  ' * depth}{span.name} [{span.service}, {span.kind}] {outcome}{' ERROR' if span.error else ''}"
            )
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def test_a_compensated_saga_is_one_trace_with_its_steps_in_order(traced: ChaosWorld, receiver: Receiver) -> None:
    traced.apply([traced.saga("traced-compensated", COMPENSATED), traced.saga("traced-succeeds", SUCCEEDS)])
    done = traced.wait_terminal(["traced-compensated", "traced-succeeds"], timeout=120)
    assert done["traced-compensated"]["status"]["phase"] == "Compensated"
    assert done["traced-succeeds"]["status"]["phase"] == "Succeeded"

    trace_id = _uid_trace(done["traced-compensated"])
    # root + 3 actions + 2 compensations, and a participant span under each of the 5 attempts
    spans = receiver.wait(trace_id, 11)
    print(f"\ntrace {trace_id} of saga traced-compensated:\n{_tree(spans)}")
    operator = _operator_spans(spans)
    (root,) = [s for s in operator if s.parent_id == ""]
    assert root.name == f"saga {traced.namespace}/traced-compensated"
    assert root.attributes["saga.phase"] == "Compensated"
    steps = [s for s in operator if s is not root]
    assert all(s.parent_id == root.span_id for s in steps)
    assert [(s.name, s.attributes["saga.step.outcome"]) for s in sorted(steps, key=lambda s: s.start)] == [
        ("step record-purchase", "succeeded"),
        ("step debit-buyer", "succeeded"),
        ("step credit-agent", "failed"),
        ("compensate debit-buyer", "succeeded"),
        ("compensate record-purchase", "succeeded"),
    ]
    (refused,) = [s for s in steps if s.name == "step credit-agent"]
    assert refused.error and refused.attributes["saga.error.reason"] == "AgentClosed"
    assert all(root.start <= s.start and s.end <= root.end for s in steps)

    # every attempt's command was handled by its participant, in a span of the same trace under the attempt's
    participant_spans = [s for s in spans if s.service != "saga-operator"]
    assert len(participant_spans) == 5, _tree(spans)
    for step in steps:
        (handled,) = [p for p in participant_spans if p.parent_id == step.span_id]
        assert handled.kind == "CONSUMER"
        assert handled.service == step.attributes["saga.participant"]
        assert handled.attributes["saga.step"] == step.attributes["saga.step"]
        assert handled.attributes["saga.step.kind"] == step.attributes["saga.step.kind"]
        # and the reply carried the participant's span back: the operator links to it
        assert handled.span_id in step.links

    # the other saga is a trace of its own
    other = receiver.wait(_uid_trace(done["traced-succeeds"]), 7)
    assert [s.name for s in _operator_spans(other) if s.parent_id] == [
        "step record-purchase",
        "step debit-buyer",
        "step credit-agent",
    ]
    assert not {s.span_id for s in other} & {s.span_id for s in spans}


def test_a_saga_stays_one_trace_across_an_operator_restart(traced: ChaosWorld, receiver: Receiver) -> None:
    # debit takes 8 s: the operator is killed while the step is in flight, and its successor applies the reply
    # (the fault knob is keyed by the name the participant runs under)
    payload = {**SUCCEEDS, "video": "v-2", "simulate": {traced.names["users"]: {"delaySeconds": 8}}}
    traced.apply([traced.saga("traced-restart", payload, timeout_seconds=30)])
    deadline = time.monotonic() + 60
    while traced.overview().get("traced-restart", ("", "", ""))[2] != "debit-buyer":
        assert time.monotonic() < deadline, traced.overview()
        time.sleep(0.1)
    traced.operator.kill()
    traced.operator.start()
    body = traced.wait_terminal(["traced-restart"], timeout=120)["traced-restart"]
    assert body["status"]["phase"] == "Succeeded", traced.operator.log_tail()

    spans = receiver.wait(_uid_trace(body), 7)
    print(f"\ntrace of saga traced-restart (operator killed during debit-buyer):\n{_tree(spans)}")
    operator = _operator_spans(spans)
    (root,) = [s for s in operator if s.parent_id == ""]
    steps = sorted((s for s in operator if s is not root), key=lambda s: s.start)
    assert [s.name for s in steps] == ["step record-purchase", "step debit-buyer", "step credit-agent"]
    assert all(s.parent_id == root.span_id for s in steps)
    # the debit's span, recorded by the second operator process, starts when the first one sent the command
    # (the successor re-sent the command, with the same traceparent: the participant answered it twice, the
    # second time from its inbox, each in a span under the same attempt's)
    debit = steps[1]
    handled = [s for s in spans if s.parent_id == debit.span_id]
    assert handled and all(s.service.startswith("users") and debit.start <= s.start for s in handled)
