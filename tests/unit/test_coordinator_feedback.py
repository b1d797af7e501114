"""The shell's part of what a person sees (against the in-memory fakes, fakes.py): an abort or a retry that
changes nothing is answered once, a spec change is recorded in observedGeneration, and finished sagas are
deleted after their TTL, also when the TTL passed while the operator was down."""

from __future__ import annotations

import pytest
from fakes import FakeStore
from test_coordinator import PARTICIPANTS, SPEC, Shell, answer, answer_everything, deliver, make_shell, started

from saga_operator.domain.model import FINALIZER, RETRY_ANNOTATION, Phase, SagaSpec
from saga_protocol import ErrorInfo, Outcome
from saga_protocol import answer as reply_for


@pytest.fixture
def shell() -> Shell:
    return make_shell(FakeStore())


def posted(shell: Shell) -> list[tuple[str, str]]:
    """The Events queued so far (type, reason), in order; the queue is emptied."""
    events: list[tuple[str, str]] = []
    while not shell.coordinator._events.empty():
        _, event, _ = shell.coordinator._events.get_nowait()
        events.append((event.type, event.reason))
    return events


def with_ttl(seconds: int | None, spec: SagaSpec = SPEC) -> SagaSpec:
    return spec.model_copy(update={"ttl_seconds_after_finished": seconds})


async def test_an_abort_of_a_finished_saga_is_answered_once_and_its_generation_recorded(shell: Shell) -> None:
    ref = await started(shell)
    await answer_everything(shell)
    assert shell.store.status(ref).phase == Phase.SUCCEEDED
    posted(shell)

    shell.store.replace_spec(ref, SPEC.model_copy(update={"abort": True}))  # generation 2
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert posted(shell) == [("Normal", "AbortIgnored")]
    status = shell.store.status(ref)
    assert status.phase == Phase.SUCCEEDED and status.observed_generation == 2
    assert {c.observed_generation for c in status.conditions} == {2}

    shell.store.touch(ref)  # any later watch event: the same abort is not answered again
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert posted(shell) == []


async def test_a_retry_annotation_on_an_invalid_spec_saga_is_answered_once(shell: Shell) -> None:
    ref = shell.store.create("bad", SPEC, finalizers=[FINALIZER])
    stored = shell.store._objects[(ref.namespace, ref.name)]
    stored["spec"]["steps"][0].pop("compensation")  # a pivot before the end: the CRD would have refused it
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    status = shell.store.status(ref)
    assert (status.phase, status.reason) == (Phase.REJECTED, "InvalidSpec")
    assert status.message == "InvalidSpec: spec: only the last step (the pivot) may have no compensation"
    assert posted(shell) == [("Warning", "InvalidSpec")]

    shell.store.annotate(ref, RETRY_ANNOTATION, "1")
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert posted(shell) == [("Normal", "RetryIgnored")]
    assert shell.store.status(ref).retry_token == "1"
    shell.store.touch(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert posted(shell) == []


async def test_a_finished_saga_is_deleted_when_its_ttl_is_due_and_not_before(shell: Shell) -> None:
    ref = shell.store.create("order-1", with_ttl(3600), finalizers=[FINALIZER])
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    await answer_everything(shell)
    assert shell.store.status(ref).phase == Phase.SUCCEEDED
    finished = shell.store.status(ref).finished_at
    assert finished is not None
    assert shell.coordinator._scheduled[ref.uid] == (finished.timestamp() + 3600)  # its one deadline: the TTL

    await shell.coordinator._tick(ref.uid)  # early (a TTL changed since): nothing happens
    assert shell.store.exists(ref) and "delete" not in shell.store.journal.kinds()

    shell.store.replace_spec(ref, with_ttl(0))  # the TTL may change on a finished saga
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    await shell.coordinator._tick(ref.uid)
    assert "delete" in shell.store.journal.kinds()
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")  # the deletionTimestamp: finalizer goes
    assert not shell.store.exists(ref)
    metric = shell.metrics.registry.get_sample_value("saga_operator_sagas_deleted_by_ttl_total", {"phase": "Succeeded"})
    assert metric == 1


async def test_a_ttl_that_passed_while_the_operator_was_down_is_honoured_at_start_up(shell: Shell) -> None:
    ref = shell.store.create("order-1", with_ttl(0), finalizers=[FINALIZER])
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    await answer_everything(shell)
    assert shell.store.status(ref).phase == Phase.SUCCEEDED  # ... and the operator stops before its deadline runs

    restarted = make_shell(shell.store)  # a new process: it lists the sagas and resumes each
    await restarted.coordinator.observe(restarted.store.body(ref), None)
    assert ref.uid in restarted.coordinator._scheduled
    await restarted.coordinator._tick(ref.uid)
    await restarted.coordinator.observe(restarted.store.body(ref), "MODIFIED")
    assert not restarted.store.exists(ref)


async def test_the_operator_default_applies_and_failed_sagas_are_never_deleted() -> None:
    shell = make_shell(FakeStore())
    shell.coordinator.ttl_default = 0
    ok = await started(shell, "ok")
    await answer_everything(shell)
    await shell.coordinator._tick(ok.uid)
    assert "delete" in shell.store.journal.kinds()

    strict = SPEC.model_copy(update={"compensation_attempt_limit": 1})
    failing = shell.store.create("stuck", strict, finalizers=[FINALIZER])
    sent = len(shell.sender.sent)
    await shell.coordinator.observe(shell.store.body(failing), "ADDED")
    await answer(shell, shell.sender.sent[sent].command)  # reserve succeeds
    await answer(shell, shell.sender.sent[sent + 1].command, Outcome.FAILED)  # charge refused
    release = shell.sender.sent[sent + 2].command
    error = reply_for(release, PARTICIPANTS[release.step], Outcome.ERROR, error=ErrorInfo(reason="Down"))
    assert await deliver(shell.coordinator, error) == []  # release errs: its limit is 1
    assert shell.store.status(failing).phase == Phase.FAILED
    await shell.coordinator._tick(failing.uid)  # whatever was scheduled for it: a Failed saga is not deleted
    assert shell.store.exists(failing) and [k for k in shell.store.journal.kinds() if k == "delete"] == ["delete"]
