"""The coordinator writing behind (SAGA_STATUS_WRITES=behind; runtime/status_writer.py), against the in-memory
fakes: a saga of compensable steps costs one status write, the undo is written before its compensations, a
window's write lands without a transition, and a conflict caused by a spec change keeps what is in memory."""

from __future__ import annotations

import asyncio

from fakes import FakeSender, FakeStore
from test_coordinator import SPEC, Shell, answer, answer_everything

from saga_operator.domain.model import Phase
from saga_operator.runtime.coordinator import Coordinator
from saga_operator.runtime.metrics import Metrics

WINDOW = 0.05


def behind_shell(window: float = 60.0) -> Shell:
    store = FakeStore()
    sender = FakeSender(store)
    metrics = Metrics()
    coordinator = Coordinator(
        store,
        sender.send,
        sender.ensure_topics,
        metrics,
        max_backoff_seconds=1,
        write_behind=True,
        coalesce_seconds=window,
    )
    return Shell(store, sender, coordinator, metrics)


def by_cause(shell: Shell, cause: str) -> float:
    value = shell.metrics.registry.get_sample_value("saga_operator_status_writes_by_cause_total", {"cause": cause})
    return value or 0.0


async def test_a_saga_of_compensable_steps_is_written_once_at_its_end() -> None:
    shell = behind_shell()
    ref = shell.store.create("order-1", SPEC)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    await answer_everything(shell)
    statuses = [entry for entry in shell.store.journal.entries if entry[0] == "status"]
    assert len(statuses) == 1
    assert shell.store.status(ref).phase == Phase.SUCCEEDED and shell.store.status(ref).written_behind
    assert by_cause(shell, "end") == 1 and by_cause(shell, "coalesced") == 0


async def test_the_window_writes_what_is_in_memory_without_a_transition() -> None:
    shell = behind_shell(WINDOW)
    ref = shell.store.create("order-1", SPEC)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    assert shell.store.status(ref).phase == Phase.PENDING  # the start is in memory only
    await asyncio.sleep(WINDOW * 4)
    await shell.coordinator.drain()
    assert shell.store.status(ref).phase == Phase.RUNNING
    assert by_cause(shell, "coalesced") == 1


async def test_the_decision_to_undo_is_written_before_its_compensations() -> None:
    shell = behind_shell()
    ref = shell.store.create("order-1", SPEC)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    await answer(shell, shell.sender.sent[0].command)  # reserve succeeded: charge goes out, written behind
    shell.store.replace_spec(ref, SPEC.model_copy(update={"abort": True}))  # a spec change: a new resourceVersion
    await shell.coordinator.observe(shell.store.body(ref), "MODIFIED")
    kinds = [entry[0] for entry in shell.store.journal.entries]
    first_compensation = next(
        i for i, e in enumerate(shell.store.journal.entries) if e[:1] == ("send",) and e[2] == "compensation"
    )
    assert "status" in kinds[:first_compensation]
    stored = shell.store.status(ref)
    charge = stored.step("charge")
    assert stored.undoing and charge is not None and charge.attempt == 1
    assert by_cause(shell, "undo") == 1


async def test_a_conflict_from_a_metadata_change_keeps_what_is_in_memory() -> None:
    shell = behind_shell()
    ref = shell.store.create("order-1", SPEC)
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    await answer(shell, shell.sender.sent[0].command)  # in memory only: reserve Succeeded, charge Dispatched
    shell.store.touch(ref)  # a label: the resourceVersion moves, the stored status is still the operator's
    await answer(shell, shell.sender.sent[1].command)  # the end: written ahead, 409, re-read, written again
    stored = shell.store.status(ref)
    assert stored.phase == Phase.SUCCEEDED
    assert shell.writes("conflict") == 1
