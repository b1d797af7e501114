"""When a finished saga is deleted for its age (saga_operator.domain.ttl): Succeeded and Compensated sagas
only, the saga's own TTL before the operator's default, none at all when neither is set."""

from __future__ import annotations

import pytest
from domain_support import COMPENSATION, T0, Saga, at, saga_spec, step

from saga_operator.domain.model import Phase, SagaSpec, SagaStatus
from saga_operator.domain.ttl import expired, expires_at, ttl_seconds
from saga_protocol import Outcome


def with_ttl(spec: SagaSpec, seconds: int | None) -> SagaSpec:
    return spec.model_copy(update={"ttl_seconds_after_finished": seconds})


def finished(phase: Phase) -> tuple[SagaSpec, SagaStatus]:
    """A saga of two steps that ended in `phase` at second 10."""
    spec = saga_spec(step("a"), step("b", retries=0), compensation_attempt_limit=1)
    saga = Saga(spec)
    saga.start()
    saga.succeed("a")
    saga.at(10)
    if phase == Phase.SUCCEEDED:
        saga.succeed("b")
    elif phase == Phase.COMPENSATED:
        saga.reply("b", Outcome.FAILED)
        saga.compensated("a")
    elif phase == Phase.FAILED:
        saga.reply("b", Outcome.FAILED)
        saga.reply("a", Outcome.ERROR, kind=COMPENSATION)
    assert saga.status.phase == phase and saga.status.finished_at == at(10)
    return spec, saga.status


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.COMPENSATED])
def test_a_saga_that_ended_well_expires_its_ttl_after_it_finished(phase: Phase) -> None:
    spec, status = finished(phase)
    spec = with_ttl(spec, 30)
    assert expires_at(spec, status, None) == at(40)
    assert not expired(spec, status, None, at(39))
    assert expired(spec, status, None, at(40))


def test_a_ttl_of_zero_deletes_at_once() -> None:
    spec, status = finished(Phase.SUCCEEDED)
    assert expired(with_ttl(spec, 0), status, None, at(10))


def test_a_failed_saga_never_expires_whatever_the_ttl() -> None:
    spec, status = finished(Phase.FAILED)
    assert expires_at(with_ttl(spec, 0), status, 0) is None
    assert not expired(with_ttl(spec, 0), status, 0, at(10**6))


def test_a_rejected_saga_never_expires() -> None:
    spec = with_ttl(saga_spec(step("a")), 0).model_copy(update={"payload": {"x": "y" * 70_000}})
    saga = Saga(spec)
    saga.start()
    assert saga.status.phase == Phase.REJECTED and saga.status.finished_at == T0
    assert expires_at(spec, saga.status, 0) is None


def test_a_saga_still_running_or_compensating_does_not_expire() -> None:
    spec = with_ttl(saga_spec(step("a"), step("b")), 0)
    saga = Saga(spec)
    saga.start()
    assert expires_at(spec, saga.status, 0) is None
    saga.succeed("a")
    saga.reply("b", Outcome.FAILED)
    assert saga.status.phase == Phase.COMPENSATING
    assert expires_at(spec, saga.status, 0) is None


def test_the_saga_s_own_ttl_wins_over_the_operator_default_and_none_means_kept() -> None:
    spec, status = finished(Phase.SUCCEEDED)
    assert ttl_seconds(spec, None) is None and expires_at(spec, status, None) is None  # off unless set
    assert expires_at(spec, status, 60) == at(70)  # the operator's default
    assert expires_at(with_ttl(spec, 5), status, 60) == at(15)  # the saga's own
    assert expires_at(with_ttl(spec, 0), status, 60) == at(10)  # 0 is a TTL, not "unset"
