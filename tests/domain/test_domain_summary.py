"""PROGRESS and DURATION, the columns `kubectl get sagas` reads (saga_operator.domain.summary)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from domain_support import T0, Saga, at, saga_spec, step

from saga_operator.domain.model import Phase, SagaStatus
from saga_operator.domain.summary import human_duration
from saga_operator.domain.transition import settle
from saga_protocol import Outcome


def three() -> Saga:
    return Saga(saga_spec(step("a"), step("b"), step("c")))


def test_progress_counts_done_steps_going_forward() -> None:
    saga = three()
    saga.start()
    assert saga.status.progress == "0/3 done"
    saga.succeed("a")
    assert saga.status.progress == "1/3 done"


def test_progress_while_compensating_says_how_many_of_the_done_steps_are_undone() -> None:
    saga = three()
    saga.start()
    saga.succeed("a", "b")
    saga.reply("c", Outcome.FAILED)
    assert (saga.status.phase, saga.status.progress) == (Phase.COMPENSATING, "2/3 done, 0 undone")
    saga.compensated("b")
    assert saga.status.progress == "2/3 done, 1 undone"
    saga.compensated("a")
    # A Compensated saga does not read 0/3: both done steps are undone.
    assert (saga.status.phase, saga.status.progress) == (Phase.COMPENSATED, "2/3 done, 2 undone")


def test_duration_runs_from_start_to_finish_and_stops_there() -> None:
    saga = three()
    saga.start()
    saga.at(1.5)
    saga.succeed("a")
    assert saga.status.duration == "1.5s"
    saga.at(75)
    saga.succeed("b", "c")
    assert (saga.status.phase, saga.status.duration) == (Phase.SUCCEEDED, "1m15s")
    saga.tick(500)  # a finished saga is not written again: the duration stays
    assert saga.status.duration == "1m15s"


def test_the_clock_alone_does_not_cause_a_write() -> None:
    saga = three()
    saga.start()
    writes = saga.writes
    saga.tick(2)  # nothing due (timeout 10s): nothing changed, so no new duration and no write
    assert (saga.writes, saga.status.duration) == (writes, "0.0s")


def test_a_saga_ended_by_the_shell_gets_its_duration() -> None:
    saga = three()
    saga.start()
    ended = settle(saga.status, Phase.FAILED, "StatusTooLarge", "too big", at(42))
    assert (ended.duration, ended.progress) == ("42s", "0/3 done")


def test_nothing_before_the_saga_started() -> None:
    ended = settle(SagaStatus(), Phase.FAILED, "CorruptStatus", "unreadable", T0 + timedelta(seconds=3))
    assert (ended.duration, ended.progress) == (None, None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0s"),
        (0.44, "0.4s"),
        (9.96, "10s"),
        (12.7, "12s"),
        (60, "1m"),
        (125, "2m5s"),
        (3600, "1h"),
        (3 * 3600 + 12 * 60 + 5, "3h12m"),
        (4 * 86400 + 2 * 3600, "4d2h"),
        (86400, "1d"),
        (-1, "0.0s"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
