"""A finished saga rests as JSON in the coordinator's memory and comes back exactly as it was.

`SagaEntry` lives in the runtime, but resting is pure (no I/O), so it is tested here with the core's
own statuses: every terminal status the transition function produces for a 3-step saga, with results,
errors, conditions and timestamps in it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from domain_support import Saga, saga_spec, step

from saga_operator.domain.model import FINALIZER, Phase, SagaSpec, SagaStatus
from saga_operator.runtime.coordinator import SagaEntry
from saga_protocol import Outcome

SPEC = saga_spec(step("reserve"), step("charge"), step("ship", compensation=None))
SPEC.payload = {"orderId": "o-1", "amount": 1250, "lines": [{"sku": "A", "qty": 2}], "note": None}


def _succeeded() -> SagaStatus:
    saga = Saga(SPEC)
    saga.start()
    saga.succeed("reserve", "charge", "ship")
    return saga.status


def _failed_at(name: str, done: list[str]) -> SagaStatus:
    saga = Saga(SPEC)
    saga.start()
    saga.succeed(*done)
    saga.reply(name, Outcome.FAILED)
    saga.compensated(*reversed(done))
    return saga.status


def _aborted() -> SagaStatus:
    saga = Saga(SPEC)
    saga.start()
    saga.succeed("reserve")
    saga.abort()
    saga.succeed("charge")  # the step in flight when the abort came finishes, then is undone
    saga.compensated("charge", "reserve")
    return saga.status


def _body(spec: SagaSpec | None, status: SagaStatus, **meta: Any) -> dict[str, Any]:
    metadata = {"namespace": "shop", "name": "order-1", "uid": "u-1", "resourceVersion": "7", "generation": 1}
    metadata.update(meta)
    return {
        "metadata": metadata,
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True) if spec else {"steps": []},
        "status": status.to_patch(),
    }


TERMINAL = {
    "succeeded": _succeeded(),
    "compensated after a failure at step 2": _failed_at("charge", ["reserve"]),
    "compensated after a failure at step 3": _failed_at("ship", ["reserve", "charge"]),
    "failed at the first step": _failed_at("reserve", []),
    "aborted": _aborted(),
}


@pytest.mark.parametrize("name", list(TERMINAL))
def test_a_finished_saga_rests_and_wakes_with_the_same_spec_and_status(name: str) -> None:
    status = TERMINAL[name]
    assert status.phase in {Phase.SUCCEEDED, Phase.COMPENSATED, Phase.FAILED}, status.phase
    entry = SagaEntry.from_body(_body(SPEC, status, finalizers=[FINALIZER]))
    entry.sent_at[("ship", "action")] = 1.0

    entry.rest()

    assert entry.resting
    assert entry.phase == status.phase  # read without waking
    assert entry.resting
    assert entry.sent_at == {}
    assert entry.status == status
    assert not entry.resting
    assert entry.spec == SPEC
    assert entry.finalized


def test_replacing_the_status_of_a_resting_saga_keeps_its_spec() -> None:
    entry = SagaEntry.from_body(_body(SPEC, TERMINAL["succeeded"]))
    entry.rest()
    newer = TERMINAL["succeeded"].model_copy(update={"seq": 99})
    entry.status = newer
    assert not entry.resting
    assert entry.spec == SPEC
    assert entry.status.seq == 99


def test_a_saga_with_a_refused_spec_rests_without_one() -> None:
    failed = SagaStatus(phase=Phase.FAILED, message="spec.steps: too short", seq=1)
    entry = SagaEntry.from_body(_body(None, failed))
    assert entry.spec is None and entry.spec_error
    entry.rest()
    assert entry.resting
    assert entry.spec is None
    assert entry.status == failed


def test_running_deleting_or_locked_sagas_do_not_rest() -> None:
    running = Saga(SPEC)
    running.start()
    entry = SagaEntry.from_body(_body(SPEC, running.status))
    entry.rest()
    assert not entry.resting and entry.phase == Phase.RUNNING

    deleting = SagaEntry.from_body(_body(SPEC, TERMINAL["succeeded"], deletionTimestamp="2026-01-01T00:00:00Z"))
    deleting.rest()
    assert not deleting.resting

    async def rest_while_locked() -> bool:
        entry = SagaEntry.from_body(_body(SPEC, TERMINAL["succeeded"]))
        async with entry.lock:
            entry.rest()
        return entry.resting

    assert asyncio.run(rest_while_locked()) is False


def test_a_pending_saga_does_not_rest() -> None:
    entry = SagaEntry.from_body(_body(SPEC, SagaStatus()))
    entry.rest()
    assert not entry.resting and entry.phase == Phase.PENDING
