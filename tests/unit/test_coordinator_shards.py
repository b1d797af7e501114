"""The coordinator of one replica among several (adapters.shards.Ownership): it drives only the sagas of its
shards, and a shard handed to it is resumed as after a restart (fakes.py's in-memory store)."""

from __future__ import annotations

from fakes import FakeStore
from test_coordinator import SPEC, make_shell, started
from test_coordinator_integrity import KEY

from saga_operator.adapters.shards import Ownership
from saga_operator.domain.model import Phase

SHARDS = 6
NOTHING = Ownership(SHARDS)


def everything_but(shard: int) -> Ownership:
    return Ownership(SHARDS, frozenset(set(range(SHARDS)) - {shard}))


async def test_a_saga_of_another_replicas_shard_is_only_watched() -> None:
    shell = make_shell(FakeStore())
    ref = shell.store.create("order-1", SPEC)
    shell.coordinator.ownership = everything_but(NOTHING.shard_of(ref.uid))
    await shell.coordinator.observe(shell.store.body(ref), "ADDED")
    assert shell.store.status(ref).phase == Phase.PENDING and shell.sender.sent == []
    assert ref.uid in shell.coordinator.sagas  # known, for the day its shard moves here
    assert shell.coordinator.phase_counts()[Phase.PENDING.value] == 0  # counted by its owner


async def test_a_shard_handed_over_is_resumed_behind_a_fencing_write() -> None:
    store = FakeStore()
    old = make_shell(store)
    ref = await started(old)
    (sent,) = old.sender.sent
    seq = store.status(ref).seq
    new = make_shell(store)
    new.coordinator.ownership = NOTHING
    await new.coordinator.observe(store.body(ref), None)  # the watch, while it owns nothing
    assert new.sender.sent == []
    shard = NOTHING.shard_of(ref.uid)
    owned = Ownership(SHARDS, frozenset({shard}))
    await new.coordinator.acquire(owned, [store.body(ref)], gained={shard})
    assert store.status(ref).seq == seq + 1  # the fence: only seq moved on
    assert [s.command.message_id for s in new.sender.sent] == [sent.command.message_id]  # the same command again


async def test_a_status_forged_while_another_replica_drove_the_saga_fails_it_at_hand_over() -> None:
    store = FakeStore()
    old = make_shell(store)
    old.coordinator.status_key = KEY
    ref = await started(old)
    new = make_shell(store)
    new.coordinator.status_key = KEY
    new.coordinator.ownership = NOTHING
    store.replace_status(ref, store.status(ref).model_copy(update={"phase": Phase.SUCCEEDED}))
    await new.coordinator.observe(store.body(ref), None)  # seen while another replica owns it: nothing done
    shard = NOTHING.shard_of(ref.uid)
    await new.coordinator.acquire(Ownership(SHARDS, frozenset({shard})), [store.body(ref)], gained={shard})
    status = store.status(ref)
    assert (status.phase, status.reason) == (Phase.FAILED, "StatusTampered")
    assert new.sender.sent == []
