"""The coordinator, the imperative shell around the pure core, against in-memory fakes of its ports (fakes.py).

The rules under test are the shell's own: the status (the saga log) is written before the commands it records are
sent; a write refused with 409 is applied again on the status as stored; a saga that is gone is dropped; the
finalizer is removed only once nothing is left to undo. tests/e2e runs the same operator on a real API server
and Kafka broker; these run in milliseconds and can stage the races that a real stack makes rare. A few tests
reach into the deadline book-keeping (`_scheduled`, `_tick`), which has no public face.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fakes import FakeSender, FakeStore
from kubernetes_asyncio.client.exceptions import ApiException

from saga_operator.adapters.kube import Gone, SagaRef
from saga_operator.domain.events import ReplyIgnored
from saga_operator.domain.model import FINALIZER, TERMINAL_PHASES, Phase, SagaSpec, StepSpec
from saga_operator.domain.template import TEMPLATE_LABEL
from saga_operator.runtime import coordinator as coordinator_module
from saga_operator.runtime.coordinator import Coordinator, SagaEntry
from saga_operator.runtime.metrics import Metrics
from saga_protocol import Command, ErrorInfo, Outcome, Reply, reply_topic
from saga_protocol import answer as reply_for

SPEC = SagaSpec(
    steps=[
        StepSpec(name="reserve", participant="stock", action="reserve", compensation="release"),
        StepSpec(name="charge", participant="payments", action="charge", compensation="refund"),
    ],
    payload={"order": "o-1"},
)
PARTICIPANTS = {step.name: step.participant for step in SPEC.steps}


@dataclass
class Shell:
    store: FakeStore
    sender: FakeSender
    coordinator: Coordinator
    metrics: Metrics

    def writes(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value("saga_operator_status_writes_total", {"result": result})
        return value or 0.0


def make_shell(store: FakeStore) -> Shell:
    sender = FakeSender(store)
    metrics = Metrics()
    coordinator = Coordinator(store, sender.send, sender.ensure_topics, metrics, max_backoff_seconds=1)
    return Shell(store, sender, coordinator, metrics)


@pytest.fixture
def shell() -> Shell:
    return make_shell(FakeStore())


def reply_to(command: Command, outcome: Outcome = Outcome.SUCCEEDED) -> Reply:
    return reply_for(
        command,
        PARTICIPANTS[command.step],
        outcome,
        error=ErrorInfo(reason="OutOfStock") if outcome is Outcome.FAILED else None,
    )


async def deliver(coordinator: Coordinator, reply: Reply) -> list[ReplyIgnored]:
    """As the reply pump hands a reply over: read from its participant's topic, keyed by its saga uid."""
    return await coordinator.apply_reply(
        reply, received=0.0, topic=reply_topic(reply.participant), key=reply.saga_uid.encode()
    )


async def answer(shell: Shell, command: Command, outcome: Outcome = Outcome.SUCCEEDED) -> None:
    ignored = await deliver(shell.coordinator, reply_to(command, outcome))
    assert ignored == [], ignored


async def answer_everything(shell: Shell) -> None:
    """Each participant succeeds at whatever it is sent, in the order sent, until nothing more is sent."""
    answered = 0
    while answered < len(shell.sender.sent):
        await answer(shell, shell.sender.sent[answered].command)
        answered += 1


async def started(shell: Shell, name: str = "order-1") -> SagaRef:
    ref = shell.store.create(name, SPEC)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    return ref


# ---- the log is written before the effect --------------------------------------------------------


async def test_a_new_saga_gets_its_finalizer_and_its_log_before_its_first_command(shell: Shell) -> None:
    ref = await started(shell)

    assert shell.store.journal.entries == [
        ("finalizers", "order-1", [FINALIZER]),
        ("status", "order-1", 1),
        ("send", "reserve", "action", 1),
    ]
    [sent] = shell.sender.sent
    assert sent.topic == "saga.commands.stock"
    assert sent.stored_status is not None and sent.stored_status.phase == Phase.RUNNING
    record = sent.stored_status.step("reserve")
    assert record is not None and record.attempt == 1  # a crash now resumes knowing the command may be out
    assert shell.store.status(ref) == shell.coordinator.sagas[ref.uid].status


async def test_a_saga_created_with_its_finalizer_costs_no_metadata_write(shell: Shell) -> None:
    ref = shell.store.create("order-1", SPEC, finalizers=[FINALIZER])  # as the admission policy creates it
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")

    assert shell.store.journal.entries == [("status", "order-1", 1), ("send", "reserve", "action", 1)]


async def test_every_command_is_preceded_by_the_status_write_that_records_it(shell: Shell) -> None:
    ref = await started(shell)
    await answer_everything(shell)

    assert shell.store.status(ref).phase == Phase.SUCCEEDED
    assert shell.sender.steps() == [("reserve", "action", 1), ("charge", "action", 1)]
    kinds = shell.store.journal.kinds()
    for index, kind in enumerate(kinds):
        if kind == "send":
            assert kinds[index - 1] == "status", shell.store.journal.entries
    for sent in shell.sender.sent:
        assert sent.stored_status is not None
        record = sent.stored_status.step(sent.command.step)
        assert record is not None and record.attempt == sent.command.attempt
    assert shell.store.finalizers(ref) == [FINALIZER]  # finished, not deleted: the finalizer stays


async def test_a_status_write_that_errors_is_retried_and_nothing_is_sent_before_it_lands(shell: Shell) -> None:
    shell.store.status_write_errors.append(ApiException(status=500, reason="Internal Server Error"))
    await started(shell)

    assert shell.store.journal.kinds() == ["finalizers", "error", "status", "send"]
    assert shell.writes("error") == 1 and shell.writes("ok") == 1
    assert shell.coordinator.api_healthy


async def test_a_command_that_cannot_be_sent_is_left_to_the_deadline_the_log_holds(shell: Shell) -> None:
    shell.sender.fail = True
    ref = await started(shell)

    assert shell.sender.sent == []
    assert shell.store.status(ref).phase == Phase.RUNNING
    assert shell.metrics.registry.get_sample_value("saga_operator_command_send_errors_total") == 1
    assert ref.uid in shell.coordinator._scheduled  # the step's timeout will send it again


# ---- 409 Conflict: read again, apply again -------------------------------------------------------------


async def test_a_conflict_reapplies_the_event_on_the_fresh_status(shell: Shell) -> None:
    ref = await started(shell)
    shell.store.before_next_write = lambda: shell.store.touch(ref)  # someone labels the saga first

    await answer(shell, shell.sender.sent[0].command)

    assert shell.store.journal.entries[-3:] == [
        ("conflict", "order-1"),
        ("status", "order-1", 2),
        ("send", "charge", "action", 1),
    ]
    assert shell.writes("conflict") == 1
    assert shell.sender.steps() == [("reserve", "action", 1), ("charge", "action", 1)]
    entry = shell.coordinator.sagas[ref.uid]
    assert entry.resource_version == shell.store.body(ref)["metadata"]["resourceVersion"]


async def test_after_a_conflict_the_stored_status_wins_over_the_one_in_memory(shell: Shell) -> None:
    """Another replica applied the same reply first: applied again on its status, the reply changes nothing."""
    ref = await started(shell)
    reply = reply_to(shell.sender.sent[0].command)
    other = make_shell(shell.store)
    other.coordinator.sagas[ref.uid] = SagaEntry.from_body(shell.store.body(ref))
    assert await deliver(other.coordinator, reply) == []
    assert other.sender.steps() == [("charge", "action", 1)]

    ignored = await deliver(shell.coordinator, reply)

    assert [e.invalid for e in ignored] == [False]  # a duplicate now, not an error
    assert shell.writes("conflict") == 1
    assert shell.sender.steps() == [("reserve", "action", 1)]  # charge was sent once, by the other replica
    assert shell.coordinator.sagas[ref.uid].status == shell.store.status(ref)


# ---- 404 Gone: drop the saga ------------------------------------------------------------------------


async def test_a_saga_deleted_behind_the_operators_back_is_dropped_when_its_reply_comes(shell: Shell) -> None:
    ref = await started(shell)
    shell.store.remove(ref)

    with pytest.raises(Gone):  # the app sets the reply aside
        await answer(shell, shell.sender.sent[0].command)

    assert ref.uid not in shell.coordinator.sagas
    assert shell.sender.steps() == [("reserve", "action", 1)]


async def test_a_saga_created_again_under_its_name_is_gone_after_the_conflict(shell: Shell) -> None:
    ref = await started(shell)
    newcomers: list[SagaRef] = []

    def recreate() -> None:
        shell.store.remove(ref)
        newcomers.append(shell.store.create("order-1", SPEC))  # same name, another uid: another saga

    shell.store.before_next_write = recreate

    with pytest.raises(Gone):
        await answer(shell, shell.sender.sent[0].command)

    assert ref.uid not in shell.coordinator.sagas
    assert shell.sender.steps() == [("reserve", "action", 1)]
    [newcomer] = newcomers
    assert "status" not in shell.store.body(newcomer)  # the old saga's log never lands on the new one


async def test_a_deadline_of_a_saga_that_is_gone_drops_it(shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = await started(shell)
    shell.store.remove(ref)
    later = datetime.now(UTC) + timedelta(hours=1)
    monkeypatch.setattr(coordinator_module, "_now", lambda: later)  # the reserve step has timed out
    del shell.coordinator._scheduled[ref.uid]

    await shell.coordinator._tick(ref.uid)

    assert ref.uid not in shell.coordinator.sagas
    assert ref.uid not in shell.coordinator._scheduled  # not retried later
    assert shell.store.journal.kinds()[-1] == "gone"
    assert shell.sender.steps() == [("reserve", "action", 1)]


# ---- the finalizer ---------------------------------------------------------------------------------


async def test_deleting_a_running_saga_compensates_it_and_only_then_removes_the_finalizer(shell: Shell) -> None:
    ref = await started(shell)
    await answer(shell, shell.sender.sent[0].command)  # reserve done, charge in flight
    shell.store.request_deletion(ref)
    answered = len(shell.sender.sent)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    finalizers_while_undoing: list[list[str]] = []
    while answered < len(shell.sender.sent):
        finalizers_while_undoing.append(shell.store.finalizers(ref))
        await answer(shell, shell.sender.sent[answered].command)
        answered += 1

    assert shell.sender.steps() == [
        ("reserve", "action", 1),
        ("charge", "action", 1),
        ("charge", "compensation", 1),
        ("reserve", "compensation", 1),
    ]
    assert all(f == [FINALIZER] for f in finalizers_while_undoing)
    entry = shell.coordinator.sagas[ref.uid]  # until the watch says DELETED
    assert entry.phase == Phase.COMPENSATED
    last_status = max(i for i, e in enumerate(shell.store.journal.entries) if e[0] == "status")
    assert shell.store.journal.entries[last_status + 1 :] == [("finalizers", "order-1", [])]
    assert not shell.store.exists(ref)

    await shell.coordinator.observe(_deleted(ref), "DELETED")
    assert ref.uid not in shell.coordinator.sagas


async def test_deleting_a_finished_saga_releases_it_at_once(shell: Shell) -> None:
    ref = await started(shell)
    await answer_everything(shell)
    assert shell.store.status(ref).phase in TERMINAL_PHASES
    before = len(shell.store.journal.entries)

    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")

    assert shell.store.journal.entries[before:] == [("finalizers", "order-1", [])]  # no status write, no command
    assert not shell.store.exists(ref)


def _deleted(ref: SagaRef) -> dict[str, object]:
    return {"metadata": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid, "resourceVersion": "0"}}


# ---- templates and inputs ---------------------------------------------------------------------------


TEMPLATE_BODY = {
    "metadata": {"name": "order", "namespace": "shop", "uid": "t-1", "resourceVersion": "5"},
    "spec": {
        "parameters": [{"name": "order", "type": "string"}],
        "steps": [
            {"name": "reserve", "participant": "stock", "action": "reserve", "compensation": "release"},
            {
                "name": "charge",
                "participant": "payments",
                "action": "charge",
                "compensation": "refund",
                "input": {"reservation": "${steps.reserve.result.id}", "order": "${payload.order}"},
            },
        ],
    },
}


async def test_a_templated_saga_gets_its_templates_label_with_the_finalizer(shell: Shell) -> None:
    """Without the admission policies (an older cluster) the finalizer PATCH labels a templated saga too."""
    shell.store.templates[("shop", "order")] = TEMPLATE_BODY
    spec = SagaSpec.model_validate({"templateRef": {"name": "order", "parameters": {"order": "o-8"}}})
    ref = shell.store.create("order-8", spec)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    meta = shell.store.body(ref)["metadata"]
    assert meta["finalizers"] == [FINALIZER] and meta["labels"] == {TEMPLATE_LABEL: "order"}
    own = await started(shell, "order-7")  # a saga of its own steps: no label
    assert "labels" not in shell.store.body(own)["metadata"]


async def test_a_templated_saga_reads_its_template_once_and_then_runs_its_status(shell: Shell) -> None:
    shell.store.templates[("shop", "order")] = TEMPLATE_BODY
    spec = SagaSpec.model_validate({"templateRef": {"name": "order", "parameters": {"order": "o-9"}}})
    ref = shell.store.create("order-9", spec)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    [first] = shell.sender.sent
    assert first.command.payload == {"order": "o-9"} and first.command.input is None
    recorded = shell.store.status(ref).template
    assert recorded is not None and (recorded.uid, recorded.resource_version) == ("t-1", "5")

    del shell.store.templates[("shop", "order")]  # deleted while the saga runs: nothing changes
    await deliver(shell.coordinator, reply_for(first.command, "stock", Outcome.SUCCEEDED, result={"id": "r-1"}))
    [_, second] = shell.sender.sent
    assert second.command.step == "charge"
    assert second.command.input == {"reservation": "r-1", "order": "o-9"}
    assert shell.store.status(ref).steps[1].input == second.command.input

    # An operator restarted after the template is gone re-sends the same command from the log.
    restarted = make_shell(shell.store)
    await restarted.coordinator.observe(shell.store.body(ref), "ADDED")
    [resent] = restarted.sender.sent
    assert (resent.command.message_id, resent.command.input) == (second.command.message_id, second.command.input)
