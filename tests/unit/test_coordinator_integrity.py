"""The coordinator with a saga it cannot trust or cannot write (fakes.py): a spec and a status that do not match,
a status that does not parse or that it did not sign, a status write refused for its size, a command refused for
its size; and deletion, which never silently drops a Failed saga that may still hold effects."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from fakes import FakeStore
from kubernetes_asyncio.client.exceptions import ApiException
from test_coordinator import SPEC, Shell, answer, make_shell, started

from saga_operator.domain.model import (
    ACCEPT_STATUS_ANNOTATION,
    DELETE_WITHOUT_COMPENSATION_ANNOTATION,
    FINALIZER,
    Phase,
    SagaSpec,
    StepSpec,
)
from saga_operator.runtime.coordinator import Coordinator
from saga_protocol import CommandKind

KEY = b"s" * 32
RENAMED = SagaSpec(
    steps=[
        StepSpec(name="reserve", participant="stock", action="reserve", compensation="release"),
        StepSpec(name="pay", participant="payments", action="charge", compensation="refund"),
    ],
    payload={"order": "o-1"},
)


@pytest.fixture
def shell() -> Shell:
    return make_shell(FakeStore())


@pytest.fixture
def signed() -> Shell:
    shell = make_shell(FakeStore())
    shell.coordinator = Coordinator(
        shell.store,
        shell.sender.send,
        shell.sender.ensure_topics,
        shell.metrics,
        max_backoff_seconds=1,
        status_key=KEY,
    )
    return shell


def warnings(shell: Shell, name: str = "order-1") -> list[str]:
    return [reason for saga, type_, reason, _ in _posted(shell) if saga == name and type_ == "Warning"]


def _posted(shell: Shell) -> list[tuple[str, str, str, str]]:
    events = []
    while not shell.coordinator._events.empty():
        ref, event, _ = shell.coordinator._events.get_nowait()
        shell.store.events.append((ref.name, event.type, event.reason, event.message))
    events.extend(shell.store.events)
    return events


def refused(shell: Shell, reason: str) -> float:
    value = shell.metrics.registry.get_sample_value("saga_operator_status_refused_total", {"reason": reason})
    return value or 0.0


# ---- a spec and a status that do not match ---------------------------------------------------------


async def test_a_step_renamed_while_running_fails_that_saga_at_resume_and_sends_nothing(shell: Shell) -> None:
    ref = await started(shell)
    await answer(shell, shell.sender.sent[0].command)
    shell.store.replace_spec(ref, RENAMED)
    restarted = make_shell(shell.store)  # the operator restarts and resumes it
    await restarted.coordinator.observe(restarted.store.body(ref), None)
    status = shell.store.status(ref)
    assert (status.phase, status.reason) == (Phase.FAILED, "SpecStatusMismatch")
    assert "step charge" in (status.message or "")
    assert restarted.sender.sent == []
    assert "SpecStatusMismatch" in warnings(restarted)


async def test_a_status_that_does_not_parse_fails_the_saga_at_first_sight(shell: Shell) -> None:
    ref = await started(shell)
    shell.store.replace_raw_status(ref, {"phase": "Running", "seq": 7, "steps": None})
    restarted = make_shell(shell.store)
    await restarted.coordinator.observe(restarted.store.body(ref), None)
    status = shell.store.status(ref)
    assert (status.phase, status.reason, status.seq) == (Phase.FAILED, "CorruptStatus", 8)
    assert "status.steps" in (status.message or "")
    assert restarted.sender.sent == [] and "CorruptStatus" in warnings(restarted)


async def test_a_status_that_does_not_parse_in_a_watch_event_is_not_adopted(shell: Shell) -> None:
    ref = await started(shell)
    ours = shell.coordinator.sagas[ref.uid].status
    shell.store.replace_raw_status(ref, {"steps": None})
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert shell.coordinator.sagas[ref.uid].status.steps == ours.steps
    assert shell.store.status(ref).model_copy(update={"seq": ours.seq}) == ours  # written back over it
    assert "CorruptStatus" in warnings(shell)
    await answer(shell, shell.sender.sent[0].command)  # and the saga goes on, overwriting it
    assert shell.store.status(ref).phase == Phase.RUNNING


# ---- size -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ApiException(status=500, reason="etcdserver: request is too large"),
        ApiException(status=413, reason="Request Entity Too Large"),
        ApiException(status=422, reason="Unprocessable Entity"),
    ],
)
async def test_a_status_write_refused_for_its_size_ends_the_saga_with_a_small_status(
    shell: Shell, error: ApiException
) -> None:
    if error.status == 422:
        error.body = b'{"message":"Request entity too large: limit is 3145728"}'
    ref = await started(shell)
    shell.store.status_write_errors = [error]
    await answer(shell, shell.sender.sent[0].command)
    status = shell.store.status(ref)
    assert (status.phase, status.reason) == (Phase.FAILED, "StatusTooLarge")
    assert all(record.result is None for record in status.steps)
    assert [s.command.step for s in shell.sender.sent] == ["reserve"]  # charge was not sent
    assert "StatusTooLarge" in warnings(shell)
    assert shell.coordinator.sagas[ref.uid].status == status


async def test_a_command_refused_for_its_size_fails_the_step_at_once_not_by_timeout(shell: Shell) -> None:
    shell.sender.too_large = {"charge"}
    ref = await started(shell)
    await answer(shell, shell.sender.sent[0].command)
    status = shell.store.status(ref)
    charge = status.step("charge")
    assert charge is not None and charge.error is not None
    assert (charge.state.value, charge.error.reason) == ("Refused", "CommandTooLarge")
    assert status.phase == Phase.COMPENSATING
    assert shell.sender.steps() == [("reserve", "action", 1), ("reserve", "compensation", 1)]
    assert shell.coordinator._scheduled  # the compensation's deadline, not charge's retry


async def test_a_payload_over_the_limit_is_rejected_and_its_deletion_is_immediate(shell: Shell) -> None:
    spec = SPEC.model_copy(update={"payload": {"blob": "x" * 70_000}})
    ref = shell.store.create("big", spec, finalizers=[FINALIZER])
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    status = shell.store.status(ref)
    assert (status.phase, status.reason) == (Phase.REJECTED, "PayloadTooLarge")
    assert shell.sender.sent == []
    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert not shell.store.exists(ref)


# ---- the digest -------------------------------------------------------------------------------------


async def test_every_status_written_is_signed_and_chained(signed: Shell) -> None:
    ref = await started(signed)
    first = signed.store.status(ref)
    await answer(signed, signed.sender.sent[0].command)
    second = signed.store.status(ref)
    assert first.digest and second.digest and second.previous_digest == first.digest


async def test_a_forged_status_is_not_adopted_and_says_so(signed: Shell) -> None:
    ref = await started(signed)
    ours = signed.coordinator.sagas[ref.uid].status
    forged = ours.model_copy(update={"phase": Phase.SUCCEEDED, "seq": ours.seq + 5})
    signed.store.replace_status(ref, forged)
    await signed.coordinator.observe(signed.store.body(ref), "MODIFIED")
    assert signed.coordinator.sagas[ref.uid].status.model_copy(update={"seq": ours.seq}).steps == ours.steps
    assert "StatusTampered" in warnings(signed) and refused(signed, "StatusTampered") == 1
    restored = signed.store.status(ref)  # its own log, written back over the forgery
    assert (restored.phase, restored.seq) == (Phase.RUNNING, ours.seq + 1)
    await signed.coordinator.observe(signed.store.body(ref), "MODIFIED")  # the watch event of that write
    assert refused(signed, "StatusTampered") == 1
    await answer(signed, signed.sender.sent[0].command)  # the run goes on from its own log
    assert signed.store.status(ref).phase == Phase.RUNNING
    assert signed.store.status(ref).seq == ours.seq + 2


async def test_a_forged_status_met_after_a_conflict_is_not_adopted_either(signed: Shell) -> None:
    ref = await started(signed)
    ours = signed.coordinator.sagas[ref.uid].status
    forged = ours.model_copy(update={"phase": Phase.SUCCEEDED})
    signed.store.before_next_write = lambda: signed.store.replace_status(ref, forged)
    await answer(signed, signed.sender.sent[0].command)
    status = signed.store.status(ref)
    assert status.phase == Phase.RUNNING and [s.command.step for s in signed.sender.sent] == ["reserve", "charge"]
    assert "StatusTampered" in warnings(signed)


async def test_a_forged_status_met_at_resume_fails_the_saga_and_sends_nothing(signed: Shell) -> None:
    ref = await started(signed)
    ours = signed.store.status(ref)
    signed.store.replace_status(ref, ours.model_copy(update={"phase": Phase.SUCCEEDED}))
    restarted = make_shell(signed.store)
    restarted.coordinator.status_key = KEY
    await restarted.coordinator.observe(restarted.store.body(ref), None)
    status = signed.store.status(ref)
    assert (status.phase, status.reason) == (Phase.FAILED, "StatusTampered")
    assert restarted.sender.sent == [] and "StatusTampered" in warnings(restarted)
    again = make_shell(signed.store)  # and after another restart it stays so, quietly
    again.coordinator.status_key = KEY
    await again.coordinator.observe(again.store.body(ref), None)
    assert signed.store.status(ref) == status and again.sender.sent == []


async def test_a_status_a_person_accepts_by_annotation_is_adopted_and_resumed(signed: Shell) -> None:
    ref = await started(signed)
    edited = signed.store.status(ref).model_copy(update={"seq": 40, "digest": None})
    signed.store.annotate(ref, ACCEPT_STATUS_ANNOTATION, "40")
    signed.store.replace_status(ref, edited)
    restarted = make_shell(signed.store)
    restarted.coordinator.status_key = KEY
    await restarted.coordinator.observe(restarted.store.body(ref), None)
    assert restarted.coordinator.sagas[ref.uid].status.seq == 40
    assert [s.command.step for s in restarted.sender.sent] == ["reserve"]  # resumed: in flight, sent again
    assert warnings(restarted) == []


# ---- deletion ---------------------------------------------------------------------------------------


async def test_an_invalid_spec_saga_is_deleted_at_once_even_when_already_refused(shell: Shell) -> None:
    ref = shell.store.create("bad", SPEC, finalizers=[FINALIZER])
    body = shell.store.body(ref)
    body["spec"]["steps"][0]["compensation"] = None
    body["spec"]["steps"][1]["compensation"] = None  # two pivots: the CRD would have refused it
    shell.store._objects[(ref.namespace, ref.name)]["spec"] = body["spec"]
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    assert (shell.store.status(ref).phase, shell.store.status(ref).reason) == (Phase.REJECTED, "InvalidSpec")
    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert not shell.store.exists(ref)


async def test_a_saga_deleted_before_it_started_is_released_without_starting(shell: Shell) -> None:
    # Created while this operator runs (two seconds after its start): no predecessor can have started it.
    later = datetime.fromtimestamp(time.time() + 2, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ref = shell.store.create("never", SPEC, finalizers=[FINALIZER], created_at=later)
    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert shell.sender.sent == [] and not shell.store.exists(ref)


async def test_an_unstarted_saga_that_predates_the_operator_is_undone_when_deleted(shell: Shell) -> None:
    # A predecessor may have sent its first step and lost the write (writing behind), whatever this mode is.
    ref = shell.store.create("inherited", SPEC, finalizers=[FINALIZER])
    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    # Started as resumed: reserve goes out as its predecessor would have sent it (the same key), then the deletion's
    # undo compensates charge first, which reserve's success may have let out unrecorded; reserve waits for it.
    sent = [(c.command.step, c.command.kind) for c in shell.sender.sent]
    assert sent == [("reserve", CommandKind.ACTION), ("charge", CommandKind.COMPENSATION)]
    status = shell.store.status(ref)
    assert status.resumed_behind and status.undoing and shell.store.exists(ref)


async def test_a_failed_saga_with_effects_is_kept_until_a_person_confirms_the_deletion(shell: Shell) -> None:
    ref = await started(shell)
    await answer(shell, shell.sender.sent[0].command)  # reserve holds an effect
    shell.store.replace_spec(ref, RENAMED)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert shell.store.status(ref).phase == Phase.FAILED
    shell.store.request_deletion(ref)
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert shell.store.exists(ref) and shell.store.finalizers(ref) == [FINALIZER]
    blocked = [m for _, _, reason, m in _posted(shell) if reason == "DeletionBlocked"]
    assert len(blocked) == 1 and "reserve" in blocked[0] and DELETE_WITHOUT_COMPENSATION_ANNOTATION in blocked[0]
    shell.store.annotate(ref, DELETE_WITHOUT_COMPENSATION_ANNOTATION, "true")
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    assert not shell.store.exists(ref)


# ---- start-up ---------------------------------------------------------------------------------------


async def test_the_start_up_resume_survives_a_saga_that_raises(shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever one saga raises at resume (a bug not yet found), the others are resumed and start-up goes on."""
    from saga_operator.config import Settings
    from saga_operator.runtime.app import OperatorApp

    good = shell.store.create("good", SPEC)
    bad = shell.store.create("bad", SPEC)

    class Listing:
        async def list_saga_page(self, namespace: str, token: str | None) -> tuple[list[dict[str, object]], None]:
            return [shell.store.body(bad), shell.store.body(good)], None

    real = shell.coordinator.observe

    async def observe(body: dict[str, object], event_type: str | None) -> None:
        if body["metadata"]["name"] == "bad":  # type: ignore[index]
            raise KeyError("charge")
        await real(body, event_type)

    monkeypatch.setattr(shell.coordinator, "observe", observe)
    app = OperatorApp(Settings())
    app._kube = Listing()  # type: ignore[assignment]
    app.coordinator = shell.coordinator
    await app._resume_all()
    assert shell.store.status(good).phase == Phase.RUNNING
    assert shell.metrics.registry.get_sample_value("saga_operator_resume_errors_total") == 1
