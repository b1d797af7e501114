"""The coordinator's stale-view re-read (`Coordinator.apply_reply`), against the in-memory fakes (fakes.py).

A replica's log in memory can be behind the stored one: another replica wrote (a hand-over, a zombie still
reading) and this one has not seen the watch event yet. A reply the core then calls a reply to a command never
sent (a verdict in STALE_VIEW_REASONS) may answer a command the stored log records: the coordinator reads the
saga once more and, if the stored log was newer, applies the reply again on it. A reply that neither log records
is still returned invalid (the reply pump dead-letters it), after that one read and no more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import FakeStore
from test_coordinator import Shell, answer, deliver, make_shell, reply_to, started

from saga_operator.adapters.kube import SagaRef
from saga_operator.domain.events import ReplyIgnored
from saga_operator.domain.model import Phase, StepState
from saga_operator.runtime import coordinator as coordinator_module
from saga_operator.runtime.coordinator import SagaEntry
from saga_protocol import Command, CommandKind, Outcome, command_id


class ReadCountingStore(FakeStore):
    """A FakeStore that counts the coordinator's reads of a saga (GET), the re-read under test."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_saga(self, ref: SagaRef) -> dict[str, Any]:
        self.reads += 1
        return await super().get_saga(ref)


class Clock:
    """The coordinator's `_now`, moved on by hand (so the other replica's step timeout and backoff run out)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store() -> ReadCountingStore:
    return ReadCountingStore()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(coordinator_module, "_now", clock)
    return clock


def second_replica(shell: Shell, ref: SagaRef) -> Shell:
    """Another replica on the same store, which has read the saga as it is stored now."""
    other = make_shell(shell.store)
    other.coordinator.sagas[ref.uid] = SagaEntry.from_body(shell.store.body(ref))
    return other


async def retried_elsewhere(shell: Shell, ref: SagaRef, clock: Clock) -> Command:
    """The other replica times the reserve step out and sends its attempt 2. Its status writes reach the store;
    `shell` never sees their watch events, so its log in memory still records attempt 1 only."""
    other = second_replica(shell, ref)
    clock.advance(3600)  # well past the step's timeout: attempt 1 has timed out, its retry waits a backoff
    await other.coordinator._tick(ref.uid)
    clock.advance(3600)  # the backoff is over: attempt 2 goes out
    await other.coordinator._tick(ref.uid)
    [retry] = other.sender.sent
    assert (retry.command.step, retry.command.kind, retry.command.attempt) == ("reserve", CommandKind.ACTION, 2)
    return retry.command


def attempts(shell: Shell, ref: SagaRef, step: str) -> tuple[int | None, int | None]:
    """The attempt of `step` in `shell`'s log in memory and in the stored log."""
    in_memory = shell.coordinator.sagas[ref.uid].status.step(step)
    stored = shell.store.status(ref).step(step)
    return (in_memory.attempt if in_memory else None, stored.attempt if stored else None)


def forged_attempt(command: Command, attempt: int) -> Command:
    """`command` as its attempt `attempt` would be, whether or not anyone sent it."""
    return command.model_copy(
        update={"attempt": attempt, "message_id": command_id(command.saga_uid, command.step, command.kind, attempt)}
    )


# ---- the stored log is newer: the reply is applied on it ----------------------------------------------------


async def test_a_reply_to_an_attempt_only_the_stored_log_records_is_applied_after_one_reread(
    store: ReadCountingStore, clock: Clock
) -> None:
    shell = make_shell(store)
    ref = await started(shell)
    retry = await retried_elsewhere(shell, ref, clock)
    assert attempts(shell, ref, "reserve") == (1, 2)  # this replica is behind
    reads = store.reads

    ignored = await deliver(shell.coordinator, reply_to(retry))

    assert ignored == []  # applied, not dead-lettered as a FutureAttempt
    assert store.reads == reads + 1
    stored = store.status(ref)
    reserve = stored.step("reserve")
    assert reserve is not None and (reserve.attempt, reserve.state) == (2, StepState.SUCCEEDED)
    assert shell.sender.steps() == [("reserve", "action", 1), ("charge", "action", 1)]  # the saga goes on
    assert shell.coordinator.sagas[ref.uid].status == stored


async def test_a_reply_to_a_compensation_only_the_stored_log_records_is_applied_after_one_reread(
    store: ReadCountingStore,
) -> None:
    """The other replica saw charge fail and sent reserve's compensation; this one still has charge in flight."""
    shell = make_shell(store)
    ref = await started(shell)
    await answer(shell, shell.sender.sent[0].command)  # reserve done, charge out
    other = second_replica(shell, ref)
    assert await deliver(other.coordinator, reply_to(shell.sender.sent[1].command, Outcome.FAILED)) == []
    [compensation] = other.sender.sent
    assert (compensation.command.step, compensation.command.kind) == ("reserve", CommandKind.COMPENSATION)
    reads = store.reads

    ignored = await deliver(shell.coordinator, reply_to(compensation.command))

    assert ignored == []  # applied, not dead-lettered as CompensationNotSent
    assert store.reads == reads + 1
    assert store.status(ref).phase == Phase.COMPENSATED
    assert shell.coordinator.sagas[ref.uid].status == store.status(ref)


async def test_a_reply_the_log_in_memory_records_costs_no_read(store: ReadCountingStore) -> None:
    shell = make_shell(store)
    await started(shell)
    reads = store.reads

    await answer(shell, shell.sender.sent[0].command)

    assert store.reads == reads  # the re-read is only for a verdict a stale view can give


# ---- neither log records it: still invalid, after exactly one re-read --------------------------------------


@pytest.mark.parametrize("stored_newer", [False, True], ids=["stored-same", "stored-newer"])
async def test_a_reply_to_an_attempt_no_log_records_is_invalid_after_exactly_one_reread(
    store: ReadCountingStore, clock: Clock, stored_newer: bool
) -> None:
    """stored-newer: the re-read finds a newer stored log (attempt 2) and the reply is applied again on it, once;
    it answers attempt 3, which that log does not record either."""
    shell = make_shell(store)
    ref = await started(shell)
    if stored_newer:
        await retried_elsewhere(shell, ref, clock)
    before = store.status(ref)
    unsent = forged_attempt(shell.sender.sent[0].command, 3 if stored_newer else 2)
    reads = store.reads

    ignored = await deliver(shell.coordinator, reply_to(unsent))

    assert ignored == [ReplyIgnored("FutureAttempt", invalid=True)]
    assert store.reads == reads + 1
    assert store.status(ref) == before  # nothing written
    assert shell.coordinator.sagas[ref.uid].status == before  # stored-newer: memory took the stored log
    assert shell.sender.steps() == [("reserve", "action", 1)]  # nothing sent
