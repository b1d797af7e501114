"""The usage count of SagaTemplates (runtime.template_usage): recounted from the watched Sagas, written only by the
owner of the template's shard, only when it changed, at most once per interval; an in-memory status store."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientConnectionError

from saga_operator.adapters.kube import Gone
from saga_operator.adapters.shards import EVERYTHING, Ownership
from saga_operator.domain.template import SagaTemplateStatus, template_status_patch
from saga_operator.runtime.template_usage import TemplateUsage

SPEC: dict[str, Any] = {
    "parameters": [{"name": "buyer", "type": "string"}],
    "steps": [{"name": "debit", "participant": "users", "action": "debit"}],
}


class StatusStore:
    """The templates' status subresource: what was written, in order; errors to raise first."""

    def __init__(self) -> None:
        self.written: list[tuple[str, str, SagaTemplateStatus]] = []
        self.errors: list[Exception] = []

    async def write_template_status(self, namespace: str, name: str, status: SagaTemplateStatus) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.written.append((namespace, name, status))

    def counts(self) -> list[tuple[str, int, int]]:
        return [(name, status.sagas, status.running) for _, name, status in self.written]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def template(name: str = "buy-video", uid: str = "t-1", status: SagaTemplateStatus | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"namespace": "shop", "name": name, "uid": uid, "generation": 1},
        "spec": SPEC,
    }
    if status is not None:
        body["status"] = template_status_patch(status)["status"]
    return body


def saga(uid: str, template_name: str = "buy-video", phase: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"namespace": "shop", "name": uid, "uid": uid, "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"templateRef": {"name": template_name}},
    }
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def usage(store: StatusStore, clock: Clock, interval: float = 0.0) -> TemplateUsage:
    return TemplateUsage(store, lambda: EVERYTHING, interval=interval, retry_seconds=30.0, clock=clock)


async def test_the_counts_follow_the_sagas_and_an_unchanged_count_writes_nothing(clock: Clock) -> None:
    store = StatusStore()
    tracker = usage(store, clock)
    tracker.saw_template(template(), "ADDED")
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 0, 0)]  # a new template shows 0 at once
    assert store.written[0][2].parameters == "buyer" and store.written[0][2].problem is None
    tracker.saw_saga(saga("a"), "ADDED")
    tracker.saw_saga(saga("b"), "ADDED")
    tracker.saw_saga(saga("other", "another-template"), "ADDED")
    await tracker.recount_due()
    assert store.counts()[1:] == [("buy-video", 2, 2)]
    # The operator's own write comes back through the watch: nothing to write.
    tracker.saw_template(template(status=store.written[-1][2]), "MODIFIED")
    tracker.saw_saga(saga("a", phase="Running"), "MODIFIED")  # still running: no recount either
    await tracker.recount_due()
    assert len(store.written) == 2
    tracker.saw_saga(saga("a", phase="Succeeded"), "MODIFIED")
    await tracker.recount_due()
    tracker.saw_saga(saga("b"), "DELETED")
    await tracker.recount_due()
    assert store.counts()[2:] == [("buy-video", 2, 1), ("buy-video", 1, 0)]
    assert tracker.writes == 4


async def test_a_burst_of_sagas_is_one_write_per_interval(clock: Clock) -> None:
    store = StatusStore()
    tracker = usage(store, clock, interval=5.0)
    tracker.saw_template(template(), None)
    for n in range(100):
        tracker.saw_saga(saga(f"s-{n}"), "ADDED")
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 100, 100)]  # the first change of a quiet template at once
    for n in range(100, 150):
        tracker.saw_saga(saga(f"s-{n}"), "ADDED")
    await tracker.recount_due()
    clock.now += 4.9
    await tracker.recount_due()
    assert len(store.written) == 1  # not before the interval is over
    clock.now += 0.1
    await tracker.recount_due()
    assert store.counts()[1:] == [("buy-video", 150, 150)]


async def test_only_the_owner_of_the_templates_shard_writes_and_a_rebalance_recounts() -> None:
    shards = 6
    uid = "t-1"
    shard = Ownership(shards).shard_of(uid)
    ownership = [Ownership(shards, frozenset(set(range(shards)) - {shard}))]
    store = StatusStore()
    tracker = TemplateUsage(store, lambda: ownership[0], interval=0.0)
    tracker.saw_template(template(uid=uid), None)
    tracker.saw_saga(saga("a"), None)
    await tracker.recount_due()
    assert store.written == [] and tracker.counted("shop", "buy-video") == 1  # counted, not written: not its shard
    ownership[0] = Ownership(shards, frozenset({shard}))
    tracker.recount_all()
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 1, 1)]


async def test_sagas_seen_before_their_template_are_counted_when_it_appears(clock: Clock) -> None:
    store = StatusStore()
    tracker = usage(store, clock)
    tracker.saw_saga(saga("a"), None)
    tracker.saw_saga(saga("b", phase="Failed"), None)
    await tracker.recount_due()
    assert store.written == []
    tracker.saw_template(template(), "ADDED")
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 2, 1)]
    # Deleted and created again under the name: the sagas naming it still count for it.
    tracker.saw_template(template(), "DELETED")
    tracker.saw_template(template(uid="t-2"), "ADDED")
    await tracker.recount_due()
    assert store.counts()[1:] == [("buy-video", 2, 1)]


async def test_a_failed_write_is_tried_again_later_and_a_deleted_template_is_let_go(clock: Clock) -> None:
    store = StatusStore()
    tracker = usage(store, clock)
    store.errors = [ClientConnectionError("refused")]
    tracker.saw_template(template(), "ADDED")
    await tracker.recount_due()
    clock.now += 29
    await tracker.recount_due()
    assert store.written == []
    clock.now += 1
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 0, 0)]
    store.errors = [RuntimeError("a bug")]  # not a transient error: logged, tried again, the task goes on
    tracker.saw_saga(saga("b", phase="Failed"), "ADDED")
    await tracker.recount_due()
    clock.now += 30
    await tracker.recount_due()
    assert store.counts()[1:] == [("buy-video", 1, 0)]
    tracker.saw_saga(saga("b"), "DELETED")
    await tracker.recount_due()
    store.errors = [Gone("buy-video")]
    tracker.saw_saga(saga("a"), "ADDED")
    await tracker.recount_due()
    tracker.saw_template(template(), "DELETED")
    await tracker.recount_due()
    assert len(store.written) == 3 and tracker.counted("shop", "buy-video") == 1


async def test_a_status_someone_else_wrote_is_put_right(clock: Clock) -> None:
    store = StatusStore()
    tracker = usage(store, clock)
    forged = SagaTemplateStatus(parameters="buyer", sagas=99, running=99, observed_generation=1)
    tracker.saw_template(template(status=forged), "MODIFIED")
    await tracker.recount_due()
    assert store.counts() == [("buy-video", 0, 0)]
