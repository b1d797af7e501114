"""The write-behind rules of the pure core (saga_operator.domain.durability): which transitions must be
written before their effects, and how a saga resumed from a log written behind is undone."""

from __future__ import annotations

from domain_support import COMPENSATION, Saga, at, ignored, pivot, saga_spec, sends, states, step

from saga_operator.domain.durability import WriteCause, maybe_dispatched, write_ahead_cause
from saga_operator.domain.events import Effect, ReplyIgnored, Start
from saga_operator.domain.model import Phase, SagaSpec, SagaStatus, StepState
from saga_operator.domain.transition import next_deadline
from saga_protocol import Outcome

S = StepState


def _cause(saga: Saga, effects: list[Effect], before: SagaStatus) -> WriteCause | None:
    return write_ahead_cause(saga.spec, before, saga.status, effects)


def _behind(spec: SagaSpec) -> Saga:
    saga = Saga(spec)
    saga.apply(Start(saga.now, write_behind=True))
    return saga


def test_the_happy_path_of_compensable_steps_may_be_written_behind_until_the_end() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c")))
    causes = []
    for move in (saga.start, lambda: saga.succeed("a"), lambda: saga.succeed("b"), lambda: saga.succeed("c")):
        before = saga.status
        causes.append(_cause(saga, move(), before))
    assert causes == [None, None, None, WriteCause.END]


def test_the_pivot_is_written_ahead_and_so_is_the_decision_to_undo() -> None:
    saga = Saga(saga_spec(step("a"), pivot("p")))
    before = saga.status
    assert _cause(saga, saga.start(), before) is None
    before = saga.status
    assert _cause(saga, saga.succeed("a"), before) == WriteCause.PIVOT  # p is sent
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    before = saga.status
    assert _cause(saga, saga.abort(), before) == WriteCause.UNDO
    saga = Saga(saga_spec(step("a"), step("b"), step("c")))
    saga.start()
    saga.succeed("a", "b")
    saga.abort()  # c is compensated first
    before = saga.status
    effects = saga.compensated("c")  # then b: compensation progress after the recorded undo
    assert sends(effects) == [("b", COMPENSATION, 1)] and _cause(saga, effects, before) is None


def test_another_attempt_and_a_persons_retry_are_written_ahead() -> None:
    saga = Saga(saga_spec(step("a", timeout=5, backoff=1), step("b")))
    saga.start()
    before = saga.status
    assert _cause(saga, saga.tick(5), before) is None  # a timeout that leaves attempts: re-derivable
    before = saga.status
    effects = saga.tick(6)
    assert sends(effects) == [("a", sends(effects)[0][1], 2)]
    assert _cause(saga, effects, before) == WriteCause.RETRY


def test_maybe_dispatched_is_transitive_and_stops_at_a_refusal_and_the_pivot() -> None:
    spec = saga_spec(step("a"), step("b"), step("c"), pivot("p"))
    status = _behind(spec).status
    assert maybe_dispatched(spec, status) == set()  # not resumed: the in-memory log is exact
    resumed = status.model_copy(update={"resumed_behind": True})
    assert maybe_dispatched(spec, resumed) == {"b", "c"}  # a is Dispatched; p is written ahead
    refused = resumed.model_copy(deep=True)
    refused.steps[0].state = S.REFUSED
    assert maybe_dispatched(spec, refused) == set()


def test_a_saga_resumed_from_a_log_written_behind_compensates_its_pending_steps_in_reverse_order() -> None:
    saga = _behind(saga_spec(step("a"), step("b"), step("c")))
    saga.resume()
    assert saga.status.resumed_behind is True
    effects = saga.abort()
    assert sends(effects) == [("c", COMPENSATION, 1)]  # c first: b waits for it, a for b
    assert states(saga.status) == {"a": S.DISPATCHED, "b": S.PENDING, "c": S.COMPENSATING}
    assert sends(saga.compensated("c")) == [("b", COMPENSATION, 1)]
    assert sends(saga.compensated("b")) == [("a", COMPENSATION, 1)]
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED
    assert states(saga.status) == {"a": S.COMPENSATED, "b": S.COMPENSATED, "c": S.COMPENSATED}


def test_without_a_lagging_log_pending_steps_are_skipped_as_before() -> None:
    saga = _behind(saga_spec(step("a"), step("b")))
    saga.abort()  # the same process: its in-memory log is exact
    assert states(saga.status) == {"a": S.COMPENSATING, "b": S.SKIPPED}
    strict = Saga(saga_spec(step("a"), step("b")))
    strict.start()
    strict.resume()
    strict.abort()
    assert strict.status.resumed_behind is None and states(strict.status)["b"] == S.SKIPPED


def test_an_unstarted_saga_found_after_a_restart_is_resumed_as_lagging_when_writing_behind() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.apply(Start(saga.now, write_behind=True, resumed=True))
    saga.abort()
    assert states(saga.status) == {"a": S.DISPATCHED, "b": S.COMPENSATING}  # b first; a waits for it
    assert sends(saga.effects) == [("b", COMPENSATION, 1)]


def test_a_strict_operator_resumes_an_unstarted_saga_as_lagging_too() -> None:
    # Its predecessor may have written behind and crashed before the first write (a switch of modes).
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.apply(Start(saga.now, write_behind=False, resumed=True))
    assert saga.status.written_behind and saga.status.resumed_behind
    assert ignored(saga.reply("b")) == [ReplyIgnored("Unrecorded", invalid=False)]
    saga.abort()
    assert states(saga.status) == {"a": S.DISPATCHED, "b": S.COMPENSATING}  # b may have been sent: undone first
    assert sends(saga.effects) == [("b", COMPENSATION, 1)]


def test_an_action_timing_out_while_it_waits_for_its_compensation_leaves_no_deadline_behind() -> None:
    # s0 -> s1 -> s2 in a line, resumed from a lagging log with s0 Dispatched: s1 and s2 may have gone out. The
    # undo compensates s2 first; s0 waits for s1 and s2. When s0's action times out meanwhile, its backoff must not
    # stay the saga's next deadline: the one that matters is s2's compensation timeout.
    saga = Saga(saga_spec(step("s0", timeout=1, retries=1, backoff=0), step("s1"), step("s2", timeout=3)))
    saga.apply(Start(saga.now, write_behind=True, resumed=True))
    saga.abort()
    assert states(saga.status) == {"s0": S.DISPATCHED, "s1": S.PENDING, "s2": S.COMPENSATING}
    saga.tick(1)  # s0's action times out: another attempt is allowed, but the saga is being undone
    assert saga.record("s0").state == S.RETRYING and sends(saga.effects) == []
    saga.tick(1)
    assert saga.record("s0").deadline is None
    assert next_deadline(saga.status) == saga.record("s2").deadline == at(3)
    saga.tick(3)  # s2's compensation times out: time moves on, and it is tried again after its backoff
    assert saga.record("s2").state == S.COMPENSATION_RETRYING
    saga.tick(4)
    assert sends(saga.effects) == [("s2", COMPENSATION, 2)]


def test_a_reply_to_an_unrecorded_command_is_ignored_not_dead_lettered_after_a_lagging_resume() -> None:
    spec = saga_spec(step("a"), step("b"))
    saga = _behind(spec)
    assert ignored(saga.reply("b")) == [ReplyIgnored("FutureAttempt", invalid=True)]
    saga.resume()
    assert ignored(saga.reply("b")) == [ReplyIgnored("Unrecorded", invalid=False)]
    # Only what a lagging log can miss: later attempts are written ahead, and so is the undo before compensations.
    assert ignored(saga.reply("b", attempt=2)) == [ReplyIgnored("FutureAttempt", invalid=True)]
    assert ignored(saga.reply("b", kind=COMPENSATION)) == [ReplyIgnored("CompensationNotSent", invalid=True)]
    saga.reply("a")  # the re-driven a succeeds: b goes out again, with the same attempt
    assert states(saga.status)["b"] == S.DISPATCHED and saga.record("b").attempt == 1
    saga.reply("b", Outcome.SUCCEEDED)
    assert saga.status.phase == Phase.SUCCEEDED
