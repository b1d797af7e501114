"""SagaTemplates in the pure core: a Saga with a templateRef is expanded by its Start, the expansion is recorded
in its status and is what it runs from then on; parameters are checked, each refusal naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest
from domain_support import SAGA_UID, T0, at, events, reply, sends

from saga_operator.domain.events import ReplyReceived, SendCommand, Start, TemplateLookup, Tick
from saga_operator.domain.model import Phase, SagaSpec, SagaStatus, StepState
from saga_operator.domain.template import SagaTemplateSpec
from saga_operator.domain.transition import transition
from saga_protocol import CommandKind

TEMPLATE = SagaTemplateSpec.model_validate(
    {
        "description": "buy a video",
        "parameters": [
            {"name": "buyer", "type": "string", "description": "who pays"},
            {"name": "price", "type": "integer", "description": "cents"},
            {"name": "currency", "type": "string", "default": "EUR"},
        ],
        "payload": {"shop": "main"},
        "steps": [
            {"name": "videos", "participant": "videos", "action": "record-purchase", "compensation": "remove-purchase"},
            {
                "name": "users",
                "participant": "users",
                "action": "debit",
                "compensation": "refund",
                "input": {
                    "reference": "${steps.videos.result.purchaseId}",
                    "amount": "${payload.price}",
                    "currency": "${payload.currency}",
                },
            },
        ],
    }
)


def templated(parameters: dict[str, Any], payload: dict[str, Any] | None = None) -> SagaSpec:
    return SagaSpec.model_validate(
        {"templateRef": {"name": "buy-video", "parameters": parameters}, "payload": payload or {}}
    )


def start(spec: SagaSpec, template: SagaTemplateSpec | None = TEMPLATE) -> tuple[SagaStatus, list[Any]]:
    lookup = TemplateLookup(template, uid="t-uid", resource_version="41")
    return transition(spec, SagaStatus(), Start(T0, template=lookup), uid=SAGA_UID, name="buy-1", namespace="shop")


def test_a_templated_saga_runs_the_templates_steps_with_the_parameters_on_its_payload() -> None:
    spec = templated({"buyer": "alice", "price": 1500}, payload={"note": "gift"})
    status, effects = start(spec)
    assert status.phase == Phase.RUNNING
    assert status.template is not None
    assert (status.template.name, status.template.uid, status.template.resource_version) == ("buy-video", "t-uid", "41")
    assert status.template.parameters == {"buyer": "alice", "price": 1500, "currency": "EUR"}
    assert status.template.payload == {
        "shop": "main",
        "note": "gift",
        "buyer": "alice",
        "price": 1500,
        "currency": "EUR",
    }
    assert [r.name for r in status.steps] == ["videos", "users"]
    assert sends(effects) == [("videos", CommandKind.ACTION, 1)]

    # What it runs next comes from its status: the template is not read again (none is given).
    done = reply(SagaSpec(steps=status.template.steps), "videos", result={"purchaseId": "p-9"})
    status, effects = transition(spec, status, ReplyReceived(done, at(1)), uid=SAGA_UID)
    [debit] = [e for e in effects if isinstance(e, SendCommand)]
    assert debit.input == {"reference": "p-9", "amount": 1500, "currency": "EUR"}
    assert status.steps[0].state == StepState.SUCCEEDED


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"price": 1500}, "parameter buyer is required by SagaTemplate buy-video (it has no default): who pays"),
        ({"buyer": "alice", "price": "1500"}, 'parameter price must be an integer, not a string: "1500"'),
        ({"buyer": "alice", "price": True}, "parameter price must be an integer, not a boolean: true"),
        ({"buyer": 7, "price": 1}, "parameter buyer must be a string, not an integer: 7"),
        (
            {"buyer": "alice", "price": 1, "colour": "red"},
            "parameter colour is not declared by SagaTemplate buy-video (it declares: buyer, price, currency)",
        ),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(parameters: dict[str, Any], message: str) -> None:
    status, effects = start(templated(parameters))
    assert status.phase == Phase.REJECTED
    assert status.reason == "InvalidParameters"
    assert status.message == f"InvalidParameters: {message}"
    assert status.steps == [] and status.template is None
    assert sends(effects) == []
    assert events(effects) == [("Warning", "InvalidParameters")]


def test_a_template_that_is_not_there_is_refused() -> None:
    status, effects = start(templated({}), template=None)
    assert (status.phase, status.reason) == (Phase.REJECTED, "TemplateNotFound")
    assert status.message == "TemplateNotFound: there is no SagaTemplate buy-video in the saga's namespace"
    assert sends(effects) == []


def test_an_input_of_the_template_that_can_never_be_evaluated_is_refused_at_start() -> None:
    broken = TEMPLATE.model_copy(deep=True)
    broken.steps[0].input = {"ref": "${steps.users.result.id}"}
    status, effects = start(templated({"buyer": "alice", "price": 1}), template=broken)
    assert (status.phase, status.reason) == (Phase.REJECTED, "InvalidInput")
    assert "step videos: input.ref: ${steps.users.result.id} refers to step users" in (status.message or "")
    assert sends(effects) == []


def test_a_templated_saga_does_nothing_before_its_start() -> None:
    spec = templated({"buyer": "alice", "price": 1})
    status, effects = transition(spec, SagaStatus(), Tick(T0), uid=SAGA_UID)
    assert (status, effects) == (SagaStatus(), [])


@pytest.mark.parametrize(
    "body",
    [{"payload": {}}, {"templateRef": {"name": "t"}, "steps": [{"name": "a", "participant": "p", "action": "x"}]}],
)
def test_a_saga_has_either_steps_or_a_template(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="either steps or a templateRef"):
        SagaSpec.model_validate(body)


def test_a_parameters_default_must_fit_its_type() -> None:
    with pytest.raises(ValueError, match="parameter price: the default is not an integer"):
        SagaTemplateSpec.model_validate(
            {
                "parameters": [{"name": "price", "type": "integer", "default": "1"}],
                "steps": [{"name": "a", "participant": "p", "action": "x"}],
            }
        )


def test_a_templated_spec_reads_back_from_its_own_dump() -> None:
    """A finished saga rests as the JSON of its spec (SagaEntry.rest): a templated one dumps `steps: []`."""
    spec = templated({"buyer": "alice", "price": 1})
    assert SagaSpec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec


def test_writing_behind_reads_a_templated_sagas_steps_from_its_status() -> None:
    """A templated saga's spec has no steps: the durability rules (which step is the pivot, which Pending step a
    lagging log may hide) read the steps its status records, as the core does."""
    from saga_operator.domain.durability import maybe_dispatched, write_ahead_cause
    from saga_operator.domain.template import SagaTemplateSpec as Template

    with_pivot = Template.model_validate(
        {**TEMPLATE.model_dump(by_alias=True, exclude_none=True), "steps": [
            *TEMPLATE.model_dump(by_alias=True, exclude_none=True)["steps"],
            {"name": "agents", "participant": "agents", "action": "credit"},
        ]}
    )  # fmt: skip
    spec = templated({"buyer": "alice", "price": 1500})
    assert spec.steps == []
    status, effects = start(spec, with_pivot)
    assert write_ahead_cause(spec, SagaStatus(), status, effects) is None  # the first step may be written behind
    assert status.template is not None
    run = SagaSpec(steps=status.template.steps)
    for name, result in (("videos", {"purchaseId": "p-9"}), ("users", None)):
        before = status
        status, effects = transition(spec, status, ReplyReceived(reply(run, name, result=result), at(1)), uid=SAGA_UID)
    assert sends(effects) == [("agents", CommandKind.ACTION, 1)]
    assert write_ahead_cause(spec, before, status, effects) is not None  # the pivot's dispatch is written ahead
    assert maybe_dispatched(spec, status.model_copy(update={"resumed_behind": True})) == set()
