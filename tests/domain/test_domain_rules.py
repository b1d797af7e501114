"""The saga rules, one example each: read top to bottom, this file is the behaviour of the core.

Each test drives `transition` by hand through `Saga` (domain_support), which also checks on every event
that the input status is not mutated and that `seq` moves by exactly one when, and only when, the
status changes.
"""

from __future__ import annotations

import pytest
from domain_support import (
    ACTION,
    COMPENSATION,
    T0,
    Saga,
    at,
    condition,
    events,
    ignored,
    pivot,
    saga_spec,
    sends,
    step,
)

from saga_operator.domain.events import EmitEvent, ReplyIgnored
from saga_operator.domain.model import Phase, SagaStatus, StepState
from saga_operator.domain.transition import next_deadline
from saga_protocol import Outcome

SUCCEEDED = StepState.SUCCEEDED
REFUSED = StepState.REFUSED
SKIPPED = StepState.SKIPPED
COMPENSATED = StepState.COMPENSATED
COMPENSATING = StepState.COMPENSATING


def buy_video() -> Saga:
    """The seed's example: record the purchase, debit the buyer, credit the seller's agent."""
    return Saga(saga_spec(step("videos"), step("users"), step("agents")))


# ---- the success path ---------------------------------------------------------------------------


def test_start_dispatches_the_first_step_only_and_records_it_before_sending() -> None:
    saga = buy_video()
    effects = saga.start()

    assert sends(effects) == [("videos", ACTION, 1)]
    assert ("Normal", "Started") in events(effects)
    status = saga.status
    assert (status.phase, status.seq, status.started_at) == (Phase.RUNNING, 1, T0)
    assert saga.states == {"videos": StepState.DISPATCHED, "users": StepState.PENDING, "agents": StepState.PENDING}
    videos = saga.record("videos")
    assert (videos.attempt, videos.dispatched_at, videos.deadline) == (1, T0, at(10))
    assert (status.current_step, status.progress, status.duration) == ("videos", "0/3 done", "0.0s")
    assert condition(status, "Completed") == "False"
    assert condition(status, "Succeeded") == "Unknown"


def test_success_path_sends_one_command_per_step_in_order_and_writes_n_plus_one_times() -> None:
    saga = buy_video()
    sent = sends(saga.start())
    for seconds, name in enumerate(["videos", "users", "agents"], start=1):
        saga.at(seconds)
        sent += sends(saga.succeed(name))

    assert sent == [("videos", ACTION, 1), ("users", ACTION, 1), ("agents", ACTION, 1)]
    status = saga.status
    assert status.phase == Phase.SUCCEEDED
    assert saga.writes == status.seq == 4  # one write per step dispatched + the final one
    assert set(saga.states.values()) == {SUCCEEDED}
    assert saga.record("users").result == {"done": "users"}
    assert ("Normal", "Succeeded") in events(saga.effects)
    assert (status.progress, status.current_step, status.finished_at) == ("3/3 done", None, at(3))
    assert status.duration == "3.0s"
    assert condition(status, "Completed") == "True"
    assert condition(status, "Succeeded") == "True"
    assert next_deadline(status) is None


# ---- business failure: compensate what completed, in reverse order -------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_business_failure_at_step_k_compensates_k_minus_1_to_1_in_reverse_order(k: int) -> None:
    names = ["a", "b", "c", "d"]
    saga = Saga(saga_spec(*(step(n) for n in names)))
    sent = sends(saga.start())
    for name in names[: k - 1]:
        sent += sends(saga.succeed(name))
    failed = names[k - 1]

    effects = saga.reply(failed, Outcome.FAILED, reason="InsufficientFunds")
    sent += sends(effects)
    assert ("Warning", "StepRefused") in events(effects)
    assert (error := saga.record(failed).error) is not None and error.reason == "InsufficientFunds"
    assert saga.status.message is not None and f"step {failed} refused" in saga.status.message
    # False only once it ends without succeeding (at once when k = 1: nothing to undo).
    assert condition(saga.status, "Succeeded") == ("Unknown" if saga.status.phase == Phase.COMPENSATING else "False")

    to_undo = list(reversed(names[: k - 1]))
    for index, name in enumerate(to_undo):
        # One compensation at a time: the next is sent only when this one is confirmed.
        assert saga.status.phase == Phase.COMPENSATING
        assert saga.states[name] == COMPENSATING
        assert [s for s, st in saga.states.items() if st == COMPENSATING] == [name]
        sent += sends(saga.compensated(name))
        assert saga.states[name] == COMPENSATED
        if index + 1 < len(to_undo):
            assert sends(saga.effects) == [(to_undo[index + 1], COMPENSATION, 1)]

    compensations = [s for s, kind, _ in sent if kind == COMPENSATION]
    assert compensations == to_undo
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {
        **{n: COMPENSATED for n in names[: k - 1]},
        failed: REFUSED,
        **{n: SKIPPED for n in names[k:]},
    }
    assert ("Normal", "Compensated") in events(saga.effects)
    assert condition(saga.status, "Completed") == "True"
    assert condition(saga.status, "Succeeded") == "False"
    assert next_deadline(saga.status) is None


# ---- timeouts and retries -----------------------------------------------------------------------


def test_timeout_retries_with_doubling_backoff_capped_then_succeeds() -> None:
    saga = Saga(saga_spec(step("a", timeout=5, retries=4, backoff=1, max_backoff=3), step("b")))
    saga.start()
    now = 0
    for attempt, wait in zip([1, 2, 3], [1, 2, 3], strict=True):  # 1, 2, then 4 capped at 3
        assert saga.tick(now + 4.9) == [] and saga.record("a").attempt == attempt  # not yet
        now += 5
        assert sends(saga.tick(now)) == []
        record = saga.record("a")
        assert record.state == StepState.RETRYING and record.error is not None
        assert record.error.reason == "Timeout"
        assert record.deadline == at(now + wait) == next_deadline(saga.status)
        assert saga.status.phase == Phase.RUNNING
        now += wait
        assert sends(saga.tick(now)) == [("a", ACTION, attempt + 1)]
        assert saga.record("a").state == StepState.DISPATCHED
        assert saga.record("a").deadline == at(now + 5)

    assert sends(saga.succeed("a", attempt=4)) == [("b", ACTION, 1)]
    assert saga.record("a").state == SUCCEEDED and saga.record("a").error is None


def test_a_transient_error_reply_is_retried_like_a_timeout() -> None:
    saga = Saga(saga_spec(step("a", backoff=2), step("b")))
    saga.start()
    saga.at(1)
    assert sends(saga.reply("a", Outcome.ERROR, reason="DatabaseDown")) == []
    record = saga.record("a")
    assert record.state == StepState.RETRYING and record.deadline == at(3)
    assert record.error is not None and record.error.reason == "DatabaseDown"
    assert sends(saga.tick(3)) == [("a", ACTION, 2)]
    # The first attempt's error, delivered again late, says nothing about the second attempt.
    before = saga.status
    assert ignored(saga.reply("a", Outcome.ERROR, attempt=1)) == [ReplyIgnored("Late", False)]
    assert saga.status == before


def test_a_late_error_of_the_latest_attempt_after_its_timeout_is_ignored() -> None:
    saga = Saga(saga_spec(step("a", timeout=5), step("b")))
    saga.start()
    saga.tick(5)
    before = saga.status
    assert ignored(saga.reply("a", Outcome.ERROR, attempt=1)) == [ReplyIgnored("Late", False)]
    assert saga.status == before


def test_a_success_reply_of_an_older_attempt_is_accepted() -> None:
    """Every attempt carries the same idempotency key: attempt 1's success is the step's success."""
    saga = Saga(saga_spec(step("a", timeout=5), step("b")))
    saga.start()
    saga.tick(5)
    saga.tick(6)
    assert saga.record("a").attempt == 2
    saga.at(7)
    assert sends(saga.succeed("a", attempt=1)) == [("b", ACTION, 1)]
    assert saga.record("a").state == SUCCEEDED and saga.record("a").deadline is None


def test_a_success_reply_while_waiting_for_the_backoff_is_accepted() -> None:
    saga = Saga(saga_spec(step("a", timeout=5, backoff=30), step("b")))
    saga.start()
    saga.tick(5)
    assert saga.record("a").state == StepState.RETRYING
    assert sends(saga.succeed("a")) == [("b", ACTION, 1)]
    assert sends(saga.tick(35)) == []  # the backoff's deadline is gone with it


def test_retries_exhausted_abandons_the_step_and_compensates_it_too_in_reverse_order() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c", timeout=10, retries=1, backoff=1)))
    saga.start()
    saga.succeed("a", "b")
    saga.tick(10)
    saga.tick(11)
    assert saga.record("c").attempt == 2
    effects = saga.tick(21)

    # Its outcome is unknown, so it is undone first (safe: compensations are idempotent, and a late
    # action is refused after one).
    assert sends(effects) == [("c", COMPENSATION, 1)]
    assert ("Warning", "StepAbandoned") in events(effects)
    assert ("Normal", "CompensationStarted") in events(effects)
    assert saga.status.message is not None and "gave up after 2 attempts" in saga.status.message
    assert sends(saga.compensated("c")) == [("b", COMPENSATION, 1)]
    assert sends(saga.compensated("b")) == [("a", COMPENSATION, 1)]
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED
    assert set(saga.states.values()) == {COMPENSATED}


def test_a_step_with_no_retries_is_abandoned_at_its_first_timeout() -> None:
    saga = Saga(saga_spec(step("a", retries=0, timeout=3), step("b")))
    saga.start()
    assert sends(saga.tick(3)) == [("a", COMPENSATION, 1)]
    assert saga.states == {"a": COMPENSATING, "b": SKIPPED}


# ---- abort -----------------------------------------------------------------------------------


def test_abort_mid_saga_compensates_the_step_in_flight_first_and_skips_the_pending_ones() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c"), step("d")))
    saga.start()
    saga.succeed("a", "b")
    effects = saga.abort()

    assert sends(effects) == [("c", COMPENSATION, 1)]  # in flight: applied or not, nobody knows
    assert events(effects) == [("Normal", "AbortRequested"), ("Normal", "CompensationStarted")]
    assert saga.states == {"a": SUCCEEDED, "b": SUCCEEDED, "c": COMPENSATING, "d": SKIPPED}
    assert saga.status.phase == Phase.COMPENSATING and saga.status.undoing
    assert condition(saga.status, "Completed") == "False"
    assert condition(saga.status, "Succeeded") == "Unknown"

    assert sends(saga.compensated("c")) == [("b", COMPENSATION, 1)]
    assert sends(saga.compensated("b")) == [("a", COMPENSATION, 1)]
    assert sends(saga.compensated("a")) == []
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {"a": COMPENSATED, "b": COMPENSATED, "c": COMPENSATED, "d": SKIPPED}


def test_a_late_action_reply_after_its_compensation_started_is_ignored() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.abort()
    before = saga.status
    for outcome in Outcome:
        assert saga.reply("a", outcome) == [ReplyIgnored("Late", False)]
        assert saga.status == before


def test_abort_before_start_ends_compensated_with_every_step_skipped() -> None:
    saga = buy_video()
    effects = saga.abort()
    assert sends(effects) == []
    assert saga.status.phase == Phase.COMPENSATED
    assert set(saga.states.values()) == {SKIPPED}
    assert ("Normal", "Compensated") in events(effects)
    assert condition(saga.status, "Succeeded") == "False"
    assert condition(saga.status, "Completed") == "True"


def test_abort_after_success_and_a_second_abort_change_nothing_but_say_so() -> None:
    saga = Saga(saga_spec(step("a")))
    saga.start()
    saga.succeed("a")
    done = saga.status
    effects = saga.abort()
    assert effects == [
        EmitEvent(
            "Normal",
            "AbortIgnored",
            "spec.abort is true but the saga already finished (Succeeded): there is nothing to abort",
        )
    ]
    assert saga.status == done

    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.abort()
    undoing = saga.status
    assert events(saga.abort()) == [("Normal", "AbortIgnored")] and saga.status == undoing


# ---- replies that change nothing -----------------------------------------------------------------


def test_a_duplicate_reply_is_ignored_as_normal_noise_and_changes_nothing() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.succeed("a")
    before = saga.status
    assert saga.succeed("a") == [ReplyIgnored("Duplicate", invalid=False)]
    assert saga.status == before and saga.status.seq == before.seq

    saga.reply("b", Outcome.FAILED)
    before = saga.status
    assert saga.reply("b", Outcome.FAILED) == [ReplyIgnored("Duplicate", invalid=False)]
    assert saga.status == before
    saga.compensated("a")
    before = saga.status
    assert saga.compensated("a") == [ReplyIgnored("Duplicate", invalid=False)]
    assert saga.status == before


def test_a_reply_after_the_saga_ended_is_ignored() -> None:
    saga = Saga(saga_spec(step("a")))
    saga.start()
    saga.succeed("a")
    before = saga.status
    assert saga.succeed("a") == [ReplyIgnored("SagaFinished", invalid=False)]
    assert saga.status == before


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("ghost", {}, "UnknownStep"),
        ("a", {"attempt": 2}, "FutureAttempt"),  # only attempt 1 was sent
        ("b", {}, "FutureAttempt"),  # b was never sent
        ("a", {"kind": COMPENSATION}, "CompensationNotSent"),
    ],
)
def test_a_reply_that_could_never_have_been_sent_is_invalid(name: str, kwargs: dict[str, object], reason: str) -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    before = saga.status
    assert saga.reply(name, **kwargs) == [ReplyIgnored(reason, invalid=True)]  # type: ignore[arg-type]
    assert saga.status == before


def test_replies_before_start_and_compensation_replies_of_future_attempts_are_invalid() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    assert saga.succeed("a") == [ReplyIgnored("SagaNotStarted", invalid=True)]
    assert saga.status == SagaStatus()
    saga.start()
    saga.abort()
    before = saga.status
    assert saga.compensated("a", attempt=2) == [ReplyIgnored("FutureAttempt", invalid=True)]
    assert saga.status == before


# ---- compensations are retried until they succeed ---------------------------------------------------


def test_compensation_errors_and_timeouts_are_retried_with_backoff() -> None:
    saga = Saga(saga_spec(step("a", timeout=5, backoff=1), step("b")))
    saga.start()
    saga.abort()
    saga.at(1)
    assert sends(saga.reply("a", Outcome.ERROR, kind=COMPENSATION)) == []
    record = saga.record("a")
    assert record.state == StepState.COMPENSATION_RETRYING and record.deadline == at(2)
    assert sends(saga.tick(2)) == [("a", COMPENSATION, 2)]
    assert sends(saga.tick(7)) == []  # attempt 2 timed out
    record = saga.record("a")
    assert record.state == StepState.COMPENSATION_RETRYING and record.deadline == at(9)
    assert record.error is not None and record.error.reason == "Timeout"
    assert sends(saga.tick(9)) == [("a", COMPENSATION, 3)]
    # "Cannot fail for business reasons": a participant that says so anyway is retried as well.
    saga.at(10)
    assert sends(saga.reply("a", Outcome.FAILED, kind=COMPENSATION, attempt=3)) == []
    assert saga.record("a").state == StepState.COMPENSATION_RETRYING
    # Any attempt's success settles it.
    saga.compensated("a", attempt=2)
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.record("a").compensation_attempt == 3


def test_a_late_compensation_error_says_nothing_about_the_latest_attempt() -> None:
    saga = Saga(saga_spec(step("a", timeout=5, backoff=1), step("b")))
    saga.start()
    saga.abort()
    saga.tick(5)  # compensation attempt 1 timed out: waiting for the backoff
    waiting = saga.status
    assert saga.reply("a", Outcome.ERROR, kind=COMPENSATION) == [ReplyIgnored("Late", False)]
    assert saga.status == waiting
    saga.tick(6)
    sent = saga.status
    assert saga.record("a").compensation_attempt == 2
    assert saga.reply("a", Outcome.ERROR, kind=COMPENSATION, attempt=1) == [ReplyIgnored("Late", False)]
    assert saga.status == sent


def test_compensation_attempt_limit_marks_the_saga_failed_and_a_retry_token_resumes_it() -> None:
    saga = Saga(saga_spec(step("a", backoff=1), step("b"), compensation_attempt_limit=2))
    saga.start()
    saga.abort()
    saga.reply("a", Outcome.ERROR, kind=COMPENSATION)
    saga.tick(1)
    effects = saga.reply("a", Outcome.ERROR, kind=COMPENSATION, attempt=2)

    assert saga.status.phase == Phase.FAILED
    assert ("Warning", "CompensationStuck") in events(effects)
    assert saga.status.message is not None and saga.status.message.startswith("CompensationStuck")
    assert condition(saga.status, "Completed") == "True"
    assert condition(saga.status, "Succeeded") == "False"
    assert next_deadline(saga.status) is None
    failed = saga.status
    assert saga.compensated("a", attempt=2) == [ReplyIgnored("Late", False)]  # a person decides now
    assert saga.tick(100) == [] and saga.status == failed

    saga.at(200)
    effects = saga.retry("token-1")
    assert sends(effects) == [("a", COMPENSATION, 3)]
    assert ("Normal", "RetryRequested") in events(effects)
    status = saga.status
    assert (status.phase, status.retries_granted, status.retry_token) == (Phase.COMPENSATING, 1, "token-1")
    assert saga.retry("token-1") == [] and saga.status == status  # the same token: answered already
    # Not Failed: nothing to retry, and an Event says so; the token is answered, once.
    ignored = saga.retry("token-2")
    assert ignored == [
        EmitEvent(
            "Normal",
            "RetryIgnored",
            "retry annotation 'token-2' ignored: the saga is Compensating, and only a Failed saga can be retried; "
            "set a new value if it fails",
        )
    ]
    assert saga.status.retry_token == "token-2" and saga.status.phase == Phase.COMPENSATING
    assert saga.retry("token-2") == []

    saga.reply("a", Outcome.ERROR, kind=COMPENSATION, attempt=3)
    assert sends(saga.tick(300)) == [("a", COMPENSATION, 4)]
    saga.reply("a", Outcome.ERROR, kind=COMPENSATION, attempt=4)
    assert saga.status.phase == Phase.FAILED  # another round of 2 attempts, used up
    failed = saga.status
    assert saga.retry("token-2") == [] and saga.status == failed  # the same token twice does nothing
    assert sends(saga.retry("token-3")) == [("a", COMPENSATION, 5)]
    assert saga.status.message == "retry 2 requested: compensating again"
    saga.compensated("a", attempt=5)
    assert saga.status.phase == Phase.COMPENSATED
    # The message is current: what the retry was doing is done.
    assert saga.status.message == "saga undone after retry 2: 1 step compensated"


# ---- the pivot: the last step, without compensation -------------------------------------------------


def pivot_saga(**pivot_kwargs: object) -> Saga:
    saga = Saga(saga_spec(step("a"), step("b"), pivot("p", **pivot_kwargs)))
    saga.start()
    saga.succeed("a", "b")
    assert saga.states["p"] == StepState.DISPATCHED
    return saga


def test_an_exhausted_pivot_marks_the_saga_failed_and_a_retry_sends_it_again() -> None:
    saga = pivot_saga(timeout=10, retries=1, backoff=1)
    saga.tick(10)
    saga.tick(11)
    effects = saga.tick(21)

    assert sends(effects) == []  # its outcome is unknown and it cannot be undone: nothing to send
    assert saga.status.phase == Phase.FAILED
    assert saga.status.message is not None and saga.status.message.startswith("PivotOutcomeUnknown")
    assert ("Warning", "PivotOutcomeUnknown") in events(effects)
    assert saga.states == {"a": SUCCEEDED, "b": SUCCEEDED, "p": StepState.ABANDONED}
    assert saga.succeed("p") == [ReplyIgnored("SagaFinished", False)]

    saga.at(30)
    assert sends(saga.retry("look-again")) == [("p", ACTION, 3)]
    assert saga.status.phase == Phase.RUNNING
    assert saga.record("p").deadline == at(40)
    saga.succeed("p", attempt=3)
    assert saga.status.phase == Phase.SUCCEEDED


def test_a_pivot_business_failure_compensates_the_other_steps() -> None:
    saga = pivot_saga()
    assert sends(saga.reply("p", Outcome.FAILED)) == [("b", COMPENSATION, 1)]
    assert sends(saga.compensated("b")) == [("a", COMPENSATION, 1)]
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {"a": COMPENSATED, "b": COMPENSATED, "p": REFUSED}


def test_abort_while_the_pivot_is_in_flight_waits_for_it_and_is_too_late_when_it_succeeds() -> None:
    saga = pivot_saga()
    effects = saga.abort()
    assert sends(effects) == []  # nothing can be undone before the pivot's answer
    assert saga.status.phase == Phase.COMPENSATING
    assert saga.states == {"a": SUCCEEDED, "b": SUCCEEDED, "p": StepState.DISPATCHED}

    effects = saga.succeed("p")
    assert saga.status.phase == Phase.SUCCEEDED
    assert ("Warning", "AbortTooLate") in events(effects)
    assert condition(saga.status, "Succeeded") == "True"
    assert set(saga.states.values()) == {SUCCEEDED}


def test_abort_while_the_pivot_is_in_flight_compensates_when_the_pivot_fails() -> None:
    saga = pivot_saga()
    saga.abort()
    assert sends(saga.reply("p", Outcome.FAILED)) == [("b", COMPENSATION, 1)]
    assert sends(saga.compensated("b")) == [("a", COMPENSATION, 1)]
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED


def test_abort_while_the_pivot_is_in_flight_keeps_retrying_the_pivot() -> None:
    saga = pivot_saga(timeout=10, backoff=1)
    saga.abort()
    assert sends(saga.tick(10)) == []
    assert saga.record("p").state == StepState.RETRYING
    assert sends(saga.tick(11)) == [("p", ACTION, 2)]


def test_the_pivot_starts_only_after_every_other_step_succeeded() -> None:
    saga = Saga(saga_spec(step("a"), step("b", depends_on=[]), pivot("p", depends_on=["a"])))
    assert sends(saga.start()) == [("a", ACTION, 1), ("b", ACTION, 1)]
    assert sends(saga.succeed("a")) == []  # p names only a, but b has not succeeded yet
    assert sends(saga.succeed("b")) == [("p", ACTION, 1)]


# ---- recovery after a restart ---------------------------------------------------------------------


def test_resumed_resends_the_commands_in_flight_with_the_same_attempt_and_changes_nothing() -> None:
    saga = Saga(saga_spec(step("a", timeout=5), step("b")))
    saga.start()
    saga.tick(5)
    saga.tick(6)
    written = saga.status
    assert sends(saga.resume()) == [("a", ACTION, 2)]
    assert saga.status == written

    saga.abort()
    written = saga.status
    assert sends(saga.resume()) == [("a", COMPENSATION, 1)]
    assert saga.status == written


def test_resumed_sends_nothing_for_a_step_waiting_for_its_backoff_or_a_finished_saga() -> None:
    saga = Saga(saga_spec(step("a", timeout=5), step("b")))
    saga.start()
    saga.tick(5)
    written = saga.status
    assert saga.resume() == [] and saga.status == written
    assert sends(saga.tick(6)) == [("a", ACTION, 2)]  # the backoff's deadline survived the restart

    saga.succeed("a", "b")
    written = saga.status
    assert saga.resume() == [] and saga.status == written


def test_resumed_on_an_empty_status_starts_the_saga() -> None:
    saga = buy_video()
    assert sends(saga.resume()) == [("videos", ACTION, 1)]
    started = Saga(buy_video().spec)
    started.start()
    assert saga.status == started.status


def test_resumed_resends_every_parallel_branch_in_flight() -> None:
    saga = Saga(saga_spec(step("a"), step("b", depends_on=[]), step("c", depends_on=[])))
    saga.start()
    saga.succeed("b")
    written = saga.status
    assert sends(saga.resume()) == [("a", ACTION, 1), ("c", ACTION, 1)]
    assert saga.status == written


# ---- dependsOn: a DAG of steps -----------------------------------------------------------------------


def diamond() -> Saga:
    """a, then b and c in parallel, then d."""
    return Saga(saga_spec(step("a"), step("b"), step("c", depends_on=["a"]), step("d", depends_on=["b", "c"])))


def test_parallel_branches_are_dispatched_together_and_joined() -> None:
    saga = diamond()
    assert sends(saga.start()) == [("a", ACTION, 1)]
    assert sends(saga.succeed("a")) == [("b", ACTION, 1), ("c", ACTION, 1)]
    assert saga.status.current_step == "b,c"
    assert sends(saga.succeed("c")) == []
    assert sends(saga.succeed("b")) == [("d", ACTION, 1)]
    saga.succeed("d")
    assert saga.status.phase == Phase.SUCCEEDED


def test_parallel_branches_are_compensated_in_reverse_dependency_order() -> None:
    saga = diamond()
    saga.start()
    saga.succeed("a", "b", "c")
    effects = saga.reply("d", Outcome.FAILED)
    assert sends(effects) == [("c", COMPENSATION, 1), ("b", COMPENSATION, 1)]  # both branches at once
    assert sends(saga.compensated("b")) == []  # a waits for c as well
    assert sends(saga.compensated("c")) == [("a", COMPENSATION, 1)]
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {"a": COMPENSATED, "b": COMPENSATED, "c": COMPENSATED, "d": REFUSED}


def test_a_branch_failing_compensates_the_other_branch_in_flight_at_once() -> None:
    saga = diamond()
    saga.start()
    saga.succeed("a")
    assert sends(saga.reply("b", Outcome.FAILED)) == [("c", COMPENSATION, 1)]
    assert saga.states == {"a": SUCCEEDED, "b": REFUSED, "c": COMPENSATING, "d": SKIPPED}
    assert sends(saga.compensated("c")) == [("a", COMPENSATION, 1)]


def test_a_timeout_that_starts_the_undo_does_not_send_another_attempt_of_a_parallel_step() -> None:
    """When one branch gives up, a parallel branch whose backoff ends at the same moment is compensated,
    not sent once more: a new action after the saga decided to undo itself is an effect nobody wants."""
    for order in (["slow", "flaky"], ["flaky", "slow"]):
        specs = {
            "slow": step("slow", depends_on=[], timeout=10, retries=0),
            "flaky": step("flaky", depends_on=[], timeout=5, retries=2, backoff=5),
        }
        saga = Saga(saga_spec(*(specs[n] for n in order), step("join", depends_on=order)))
        saga.start()
        saga.tick(5)
        assert saga.record("flaky").state == StepState.RETRYING
        effects = saga.tick(10)  # slow gives up; flaky's backoff ends
        assert saga.states["slow"] == COMPENSATING
        assert saga.states["flaky"] == COMPENSATING
        assert sorted(sends(effects)) == [("flaky", COMPENSATION, 1), ("slow", COMPENSATION, 1)], order
        assert saga.record("flaky").attempt == 1


# ---- what kubectl shows, and when to wake up -------------------------------------------------------


def test_conditions_follow_the_phase_and_keep_their_transition_time_until_they_change() -> None:
    saga = buy_video()
    saga.start()
    completed = next(c for c in saga.status.conditions if c.type == "Completed")
    assert (completed.status.value, completed.reason, completed.last_transition_time) == ("False", "Running", T0)
    saga.at(5)
    saga.succeed("videos")
    completed = next(c for c in saga.status.conditions if c.type == "Completed")
    assert completed.last_transition_time == T0  # still False
    saga.at(9)
    saga.succeed("users", "agents")
    completed = next(c for c in saga.status.conditions if c.type == "Completed")
    assert (completed.status.value, completed.reason, completed.last_transition_time) == ("True", "Succeeded", at(9))


@pytest.mark.parametrize(
    ("drive", "phase", "completed", "succeeded"),
    [
        (lambda s: None, Phase.RUNNING, "False", "Unknown"),
        (lambda s: s.abort(), Phase.COMPENSATING, "False", "Unknown"),
        (lambda s: s.succeed("a", "b"), Phase.SUCCEEDED, "True", "True"),
        (lambda s: (s.abort(), s.compensated("a")), Phase.COMPENSATED, "True", "False"),
        (lambda s: (s.succeed("a"), s.tick(10), s.tick(11), s.tick(21)), Phase.FAILED, "True", "False"),
    ],
)
def test_completed_and_succeeded_conditions_per_phase(drive, phase, completed, succeeded) -> None:  # type: ignore[no-untyped-def]
    saga = Saga(saga_spec(step("a"), pivot("b", retries=1)))
    saga.start()
    drive(saga)
    assert saga.status.phase == phase
    assert condition(saga.status, "Completed") == completed
    assert condition(saga.status, "Succeeded") == succeeded
    assert [c.type for c in saga.status.conditions] == ["Completed", "Succeeded"]


def test_next_deadline_is_the_earliest_step_deadline_while_the_saga_runs() -> None:
    saga = Saga(saga_spec(step("a", timeout=7), step("b", depends_on=[], timeout=3), step("c", timeout=4)))
    assert next_deadline(saga.status) is None  # not started
    saga.start()
    assert next_deadline(saga.status) == at(3)
    saga.at(1)
    saga.succeed("b")
    assert next_deadline(saga.status) == at(5)  # c, sent at 1
    saga.at(2)
    saga.succeed("c")
    assert next_deadline(saga.status) == at(7)
    saga.tick(7)
    assert next_deadline(saga.status) == at(8)  # a's backoff
    saga.succeed("a")
    assert saga.status.phase == Phase.SUCCEEDED and next_deadline(saga.status) is None


def test_a_failed_saga_has_no_deadline_even_with_other_compensations_in_flight() -> None:
    """A person decides now: the shell must not wake up for the other steps' timeouts."""
    saga = Saga(
        saga_spec(step("a"), step("b", depends_on=[]), step("c", depends_on=["a", "b"]), compensation_attempt_limit=1)
    )
    saga.start()
    assert sends(saga.abort()) == [("b", COMPENSATION, 1), ("a", COMPENSATION, 1)]
    saga.reply("a", Outcome.ERROR, kind=COMPENSATION)
    assert saga.status.phase == Phase.FAILED
    assert saga.record("b").deadline is not None  # b's compensation is still in flight
    assert next_deadline(saga.status) is None
    failed = saga.status
    assert saga.tick(1000) == [] and saga.status == failed
    assert sends(saga.retry("again")) == [("a", COMPENSATION, 2), ("b", COMPENSATION, 2)]


def test_one_tick_handles_every_deadline_that_is_due() -> None:
    saga = Saga(saga_spec(step("a", timeout=3), step("b", depends_on=[], timeout=4)))
    saga.start()
    assert sends(saga.tick(4)) == []
    assert saga.states == {"a": StepState.RETRYING, "b": StepState.RETRYING}
    assert sends(saga.tick(6)) == [("a", ACTION, 2), ("b", ACTION, 2)]
