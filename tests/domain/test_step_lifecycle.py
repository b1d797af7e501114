"""The step lifecycle table (saga_operator.domain.lifecycle): every move it holds works, every other pair of
(state, event) is rejected, the core uses every move, and nothing but `move` writes a step's state."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
from domain_support import T0, Saga, at, pivot, saga_spec, sends, step

import saga_operator
from saga_operator.domain import transition as transition_module
from saga_operator.domain.events import EmitEvent, Start
from saga_operator.domain.lifecycle import (
    IN_FLIGHT,
    MOVES,
    SETTLED,
    TO_UNDO,
    IllegalStepMove,
    StepEvent,
    move,
    next_state,
)
from saga_operator.domain.model import Phase, StepState, StepStatus
from saga_protocol import CommandKind, Outcome

ILLEGAL = [pair for pair in itertools.product(StepState, StepEvent) if pair not in MOVES]


@pytest.mark.parametrize(("state", "event"), list(MOVES), ids=lambda value: str(value))
def test_every_move_in_the_table_leads_where_the_table_says(state: StepState, event: StepEvent) -> None:
    record = StepStatus(name="s", state=state, attempt=1)
    move(record, event)
    assert record.state == MOVES[(state, event)]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda value: str(value))
def test_every_pair_not_in_the_table_is_rejected_and_changes_nothing(state: StepState, event: StepEvent) -> None:
    record = StepStatus(name="s", state=state, attempt=1)
    with pytest.raises(IllegalStepMove, match=f"step s: no move from {state} on {event}") as raised:
        move(record, event)
    assert (raised.value.step, raised.value.from_state, raised.value.event) == ("s", state, event)
    assert record.state == state
    with pytest.raises(IllegalStepMove):
        next_state("s", state, event)


def test_the_table_and_the_rejected_pairs_cover_every_pair_once() -> None:
    assert len(MOVES) + len(ILLEGAL) == len(StepState) * len(StepEvent)


def test_every_state_is_reachable_from_pending_and_only_the_settled_ends_have_no_way_out() -> None:
    reached, frontier = {StepState.PENDING}, [StepState.PENDING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in MOVES.items():
            if source == state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(StepState)
    dead_ends = set(StepState) - {source for source, _ in MOVES}
    assert dead_ends == {StepState.REFUSED, StepState.COMPENSATED, StepState.SKIPPED}
    assert dead_ends <= SETTLED


def test_the_named_sets_of_states_agree_with_the_table() -> None:
    # A compensation starts exactly from the states that may hold an effect not undone yet.
    assert {source for (source, event) in MOVES if event == StepEvent.COMPENSATION_DISPATCH} == TO_UNDO
    assert not SETTLED & TO_UNDO
    assert not SETTLED & IN_FLIGHT


# ---- the core uses every move ----------------------------------------------------------------------


def _success_then_a_refusal() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c")))
    saga.start()  # a: Dispatch
    saga.succeed("a")  # a: Succeed; b: Dispatch
    saga.reply("b", Outcome.FAILED)  # b: Refuse; c: Skip; a: CompensationDispatch
    saga.compensated("a")  # a: Compensated
    assert saga.status.phase == Phase.COMPENSATED


def _answers_to_earlier_attempts_while_retrying() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.tick(10)  # a: AttemptFailed
    saga.reply("a", attempt=1)  # a: Succeed (from Retrying); b: Dispatch
    saga.tick(20)  # b: AttemptFailed
    saga.reply("b", Outcome.FAILED, attempt=1)  # b: Refuse (from Retrying); a: CompensationDispatch
    saga.tick(30)  # a: CompensationAttemptFailed
    saga.compensated("a", attempt=1)  # a: Compensated (from CompensationRetrying)
    assert saga.status.phase == Phase.COMPENSATED


def _retries_used_up() -> None:
    saga = Saga(saga_spec(step("a", retries=1), step("b")))
    saga.start()
    saga.tick(10)  # a: AttemptFailed
    saga.tick(11)  # a: RetryDue
    saga.tick(21)  # a: GiveUp, then CompensationDispatch
    saga.tick(31)  # a: CompensationAttemptFailed
    saga.tick(32)  # a: CompensationRetryDue
    assert saga.states["a"] == StepState.COMPENSATING


def _abort_while_one_step_waits_for_a_reply_and_another_for_its_backoff() -> None:
    saga = Saga(saga_spec(step("a"), step("b", depends_on=[], timeout=5)))
    saga.start()
    saga.tick(5)  # b: AttemptFailed
    saga.abort()  # a: CompensationDispatch (from Dispatched); b: CompensationDispatch (from Retrying)
    assert saga.states == {"a": StepState.COMPENSATING, "b": StepState.COMPENSATING}


def _the_pivot_retried_by_a_person() -> None:
    saga = Saga(saga_spec(step("a"), pivot("p", retries=0)))
    saga.start()
    saga.succeed("a")  # p: Dispatch
    saga.tick(10)  # p: GiveUp: the saga is Failed (PivotOutcomeUnknown)
    assert saga.status.phase == Phase.FAILED
    saga.retry("t1")  # p: RetryGranted (from Abandoned)
    assert saga.states["p"] == StepState.DISPATCHED


def _stuck_compensations_retried_by_a_person() -> None:
    saga = Saga(
        saga_spec(
            step("a", timeout=1, backoff=1),
            step("b", depends_on=[], timeout=1, backoff=10),
            step("c", depends_on=["a", "b"]),
            compensation_attempt_limit=2,
        )
    )
    saga.start()
    saga.succeed("a", "b")
    saga.reply("c", Outcome.FAILED)  # a, b: CompensationDispatch
    saga.tick(1)  # a, b: CompensationAttemptFailed (a waits 1 s, b 10 s)
    saga.tick(2)  # a: CompensationRetryDue
    saga.tick(3)  # a's last attempt times out: the saga is Failed (CompensationStuck)
    assert saga.status.phase == Phase.FAILED
    assert saga.states == {"a": StepState.COMPENSATING, "b": StepState.COMPENSATION_RETRYING, "c": StepState.REFUSED}
    saga.retry("t1")  # a: RetryGranted (from Compensating); b: RetryGranted (from CompensationRetrying)
    assert sends(saga.effects) == [("a", CommandKind.COMPENSATION, 3), ("b", CommandKind.COMPENSATION, 2)]


def _an_input_that_cannot_be_evaluated() -> None:
    saga = Saga(saga_spec(step("a"), step("b", input={"id": "${steps.a.result.missing}"})))
    saga.start()
    saga.succeed("a")  # b: InputFailed (nothing sent); a: CompensationDispatch
    assert saga.states == {"a": StepState.COMPENSATING, "b": StepState.REFUSED}


def _aborted_after_a_restart_from_a_log_written_behind() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c")))
    saga.apply(Start(saga.now, write_behind=True))  # a: Dispatch
    log = saga.status  # the only status written: a Dispatched; a succeeded and b went out, unrecorded
    saga.status = log
    saga.resume()  # the log may lag: b and c may have been dispatched
    saga.abort()  # c, b: CompensateUnrecorded (c first); a waits for b
    saga.compensated("c", "b")  # b Compensated: a: CompensationDispatch
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED


SCENARIOS = [
    _an_input_that_cannot_be_evaluated,
    _aborted_after_a_restart_from_a_log_written_behind,
    _success_then_a_refusal,
    _answers_to_earlier_attempts_while_retrying,
    _retries_used_up,
    _abort_while_one_step_waits_for_a_reply_and_another_for_its_backoff,
    _the_pivot_retried_by_a_person,
    _stuck_compensations_retried_by_a_person,
]


def test_the_core_uses_every_move_of_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """No move in the table (and so in the diagram) is dead: each one is what the core does somewhere."""
    used: set[tuple[StepState, StepEvent]] = set()

    def recording_move(record: StepStatus, event: StepEvent) -> None:
        used.add((record.state, event))
        move(record, event)

    monkeypatch.setattr(transition_module, "move", recording_move)
    for scenario in SCENARIOS:
        scenario()
    assert used == set(MOVES), f"moves the core never made: {sorted(set(MOVES) - used)}"


# ---- one writer ----------------------------------------------------------------------------------


def test_nothing_but_move_assigns_a_step_state_in_the_product() -> None:
    package = Path(saga_operator.__file__).parent
    writers: list[tuple[str, str]] = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            writers += [
                (str(path.relative_to(package)), ast.unparse(target))
                for target in targets
                if isinstance(target, ast.Attribute) and target.attr == "state"
            ]
    assert writers == [("domain/lifecycle.py", "record.state")], "a step's state written outside lifecycle.move"


# ---- what kubectl describe shows of a step ------------------------------------------------------------


def test_a_compensation_s_dispatch_keeps_the_action_s_time() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.at(2)
    saga.succeed("a")
    saga.at(5)
    saga.reply("b", Outcome.FAILED, reason="InsufficientFunds")
    saga.at(7)
    saga.compensated("a")
    a = saga.record("a")
    assert (a.dispatched_at, a.finished_at) == (T0, at(2))  # the action: sent, answered
    assert (a.compensation_dispatched_at, a.compensated_at) == (at(5), at(7))  # the compensation: sent, answered


def test_messages_count_attempts_and_steps_grammatically() -> None:
    saga = Saga(saga_spec(step("a"), step("b", retries=0, timeout=5)))
    effects = saga.start()
    assert [e.message for e in effects if isinstance(e, EmitEvent)] == ["saga started with 2 steps"]
    saga.succeed("a")
    effects = saga.tick(5)
    abandoned = [e.message for e in effects if isinstance(e, EmitEvent) and e.reason == "StepAbandoned"]
    assert abandoned == ["step b gave up after 1 attempt: Timeout: no reply to attempt 1 in 5s"]
    effects = saga.compensated("b", "a")  # b too: whether its action was applied is unknown
    assert [e.message for e in effects if isinstance(e, EmitEvent)] == ["saga undone: 2 steps compensated"]


def test_the_events_of_one_transition_come_in_the_order_they_happened() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.succeed("a")
    effects = saga.reply("b", Outcome.FAILED, reason="InsufficientFunds")
    assert [e.reason for e in effects if isinstance(e, EmitEvent)] == ["StepRefused", "CompensationStarted"]
