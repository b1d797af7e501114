"""Step inputs in the pure core: evaluated before the first attempt from the payload, the saga's metadata and
the results of the steps depended on; refused at start when they can never be evaluated; a failure at run
time fails the step before anything is sent. (The hypothesis world, test_domain_world.py, checks that every
command of a step carries the same input and that a compensation sees its action's result.)"""

from __future__ import annotations

from typing import Any

import pytest
from domain_support import SAGA_UID, Saga, events, pivot, saga_spec, sends, step

from saga_operator.domain.events import SendCommand
from saga_operator.domain.model import Phase, SagaSpec, StepState
from saga_protocol import CommandKind, Outcome


def commands(effects: list[Any]) -> list[SendCommand]:
    return [e for e in effects if isinstance(e, SendCommand)]


def with_payload(spec: SagaSpec, payload: dict[str, Any]) -> SagaSpec:
    return spec.model_copy(update={"payload": payload})


def test_a_result_is_passed_forward_into_a_later_steps_input() -> None:
    spec = with_payload(
        saga_spec(
            step("videos"),
            step(
                "users",
                input={
                    "reference": "${steps.videos.result.purchaseId}",
                    "amount": "${payload.price}",
                    "note": "${'saga ' + saga.uid}",
                    "fixed": [1, "two", {"three": None}],
                },
            ),
        ),
        {"price": 1500},
    )
    saga = Saga(spec)
    [first] = commands(saga.start())
    assert first.input is None  # it declares none
    [debit] = commands(saga.reply("videos", result={"purchaseId": "p-7"}))
    expected = {"reference": "p-7", "amount": 1500, "note": f"saga {SAGA_UID}", "fixed": [1, "two", {"three": None}]}
    assert debit.input == expected
    assert saga.record("users").input == expected


def test_a_step_reads_the_steps_it_depends_on_through_others_and_the_pivot_reads_every_step() -> None:
    spec = saga_spec(
        step("a"),
        step("b", depends_on=[]),
        step("c", depends_on=["a"], input={"a": "${steps.a.result.done}"}),
        pivot("p", input={"all": "${[steps.a.result.done, steps.b.result.done, steps['c'].input.a]}"}),
    )
    saga = Saga(spec)
    saga.start()
    [c] = commands(saga.succeed("a"))
    assert c.input == {"a": "a"}
    saga.succeed("b")
    [p] = commands(saga.succeed("c"))
    assert p.input == {"all": ["a", "b", "a"]}


def test_every_attempt_and_every_re_send_carries_the_input_recorded_at_the_first() -> None:
    saga = Saga(saga_spec(step("a"), step("b", input={"ref": "${steps.a.result.id}"})))
    saga.start()
    saga.reply("a", result={"id": "x-1"})
    saga.tick(10)  # b times out: attempt 2 after the backoff
    [retry] = commands(saga.tick(11))
    [resent] = commands(saga.resume())
    assert (retry.attempt, resent.attempt) == (2, 2)
    assert retry.input == resent.input == {"ref": "x-1"}


def test_a_compensation_carries_its_actions_input_and_result() -> None:
    saga = Saga(saga_spec(step("a", input={"k": "${payload}"}), step("b")))
    saga.start()
    saga.reply("a", result={"id": "x-1"})
    [undo] = commands(saga.reply("b", Outcome.FAILED))
    assert undo.kind == CommandKind.COMPENSATION
    assert (undo.input, undo.action_result) == ({"k": {}}, {"id": "x-1"})


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("${steps.b.result.id}", "refers to step b, which step c does not depend on (directly or through others)"),
        ("${steps.zz.result}", "refers to step zz, which is not a step of this saga"),
        ("${steps.c.result}", "refers to step c itself: a step reads only the steps it depends on"),
        ("${steps['b'].result}", "refers to step b, which step c does not depend on"),
        ("${steps[payload.which].result}", "indexes steps with something other than a quoted step name"),
        ("${size(steps)}", "uses steps other than as steps.<name> or steps['<name>']"),
        ("${paylod.price}", "names paylod, which is none of payload, saga, steps"),
        ("${payload.items.map(i, i.price)}", "uses the macro map(): an input may not loop over values"),
        ("${payload.price +}", "does not parse"),
        ("${" + "1 + " * 300 + "1}", "longer than 1024 characters"),
    ],
)
def test_an_input_that_can_never_be_evaluated_is_refused_at_start_naming_the_step(expression: str, why: str) -> None:
    spec = saga_spec(step("a"), step("b", depends_on=[]), step("c", depends_on=["a"], input={"ref": expression}))
    saga = Saga(spec)
    effects = saga.start()
    assert saga.status.phase == Phase.REJECTED
    assert saga.status.reason == "InvalidInput"
    assert saga.status.message is not None
    assert saga.status.message.startswith(f"InvalidInput: step c: input.ref: {expression[:40]}")
    assert why in saga.status.message
    assert sends(effects) == []
    assert ("Warning", "InvalidInput") in events(effects)


@pytest.mark.parametrize(
    ("expression", "reason", "detail"),
    [
        ("${steps.a.result.missing}", "InputFailed", "no such member in mapping: 'missing'"),
        ("${1 / (size(steps.a.result) - 1)}", "InputFailed", "divide by zero"),
        ("${b'bytes'}", "InputFailed", "has no JSON form"),
        ("${steps.a.result.big + steps.a.result.big}", "InputTooLarge", "the input of step b is"),
    ],
)
def test_an_input_that_fails_at_run_time_fails_the_step_before_it_is_sent_and_undoes_what_ran(
    expression: str, reason: str, detail: str
) -> None:
    saga = Saga(saga_spec(step("a"), step("b", input={"v": expression}), step("c")))
    saga.start()
    effects = saga.reply("a", result={"big": "x" * 40_000})
    assert saga.states["b"] == StepState.REFUSED
    record = saga.record("b")
    assert record.error is not None and record.error.reason == reason and detail in record.error.message
    assert (record.attempt, record.command_id, record.input) == (0, None, None)  # nothing was sent for it
    assert sends(effects) == [("a", CommandKind.COMPENSATION, 1)]
    assert ("Warning", reason) in events(effects)
    saga.compensated("a")
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {"a": StepState.COMPENSATED, "b": StepState.REFUSED, "c": StepState.SKIPPED}


def test_an_input_of_the_first_step_that_fails_ends_the_saga_at_once() -> None:
    saga = Saga(saga_spec(step("a", input={"v": "${payload.missing}"}), step("b")))
    effects = saga.start()
    assert sends(effects) == []
    assert saga.status.phase == Phase.COMPENSATED
    assert saga.states == {"a": StepState.REFUSED, "b": StepState.SKIPPED}


def test_a_string_that_is_not_wholly_an_expression_is_sent_as_written() -> None:
    saga = Saga(saga_spec(step("a", input={"v": "price: ${payload.price}", "w": "${'${literal}'}"})))
    [command] = commands(saga.start())
    assert command.input == {"v": "price: ${payload.price}", "w": "${literal}"}


def test_an_input_whose_expressions_read_too_many_values_fails_the_step_without_evaluating() -> None:
    """Converting values to CEL is the cost of an evaluation: past MAX_VALUES_READ the step fails, so one
    saga's input cannot hold the operator's event loop while every other saga waits."""
    saga = Saga(saga_spec(step("a"), step("b", input={"n": "${size(steps.a.result.many)}"}), step("c")))
    saga.start()
    saga.reply("a", result={"many": list(range(1990))})
    assert saga.states["b"] == StepState.DISPATCHED
    assert saga.record("b").input == {"n": 1990}

    saga = Saga(saga_spec(step("a"), step("b", input={"n": "${size(steps.a.result.many)}"}), step("c")))
    saga.start()
    effects = saga.reply("a", result={"many": list(range(2000))})
    assert saga.states["b"] == StepState.REFUSED
    record = saga.record("b")
    assert record.error is not None and record.error.reason == "InputTooLarge"
    assert "read more than 2000 JSON values" in record.error.message
    assert sends(effects) == [("a", CommandKind.COMPENSATION, 1)]
