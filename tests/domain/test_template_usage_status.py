"""A SagaTemplate's usage status in the pure core: which template a Saga body names, the parameters as the
PARAMETERS column shows them, and the counts (domain.template.template_status)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from saga_operator.domain.template import (
    SagaTemplateStatus,
    SagaUse,
    parameter_summary,
    saga_use,
    template_problem,
    template_status,
    template_status_patch,
)

SPEC: dict[str, Any] = {
    "parameters": [
        {"name": "buyer", "type": "string"},
        {"name": "video", "type": "string"},
        {"name": "price", "type": "integer"},
        {"name": "agent", "type": "string"},
        {"name": "simulate", "type": "object", "default": {}},
    ],
    "steps": [],
}


def saga(template: str | None, phase: str | None = None, created: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"uid": "u-1", "namespace": "shop", "name": "s", "creationTimestamp": created},
        "spec": {"templateRef": {"name": template}} if template is not None else {"steps": []},
    }
    if phase is not None:
        body["status"] = {"phase": phase}
    return body


def at(hour: int) -> datetime:
    return datetime(2026, 12, 1, hour, tzinfo=UTC)


def test_the_parameters_column_names_them_in_order_the_optional_ones_in_brackets() -> None:
    assert parameter_summary(SPEC) == "buyer,video,price,agent,[simulate]"
    assert parameter_summary({"steps": []}) == ""
    # a default of false or 0 is a default all the same
    assert parameter_summary({"parameters": [{"name": "dry", "type": "boolean", "default": False}]}) == "[dry]"


@pytest.mark.parametrize(
    ("phase", "running"),
    [(None, True), ("Pending", True), ("Running", True), ("Compensating", True)]
    + [(p, False) for p in ("Succeeded", "Compensated", "Failed", "Rejected")],
)
def test_a_saga_is_running_until_it_reaches_an_end_phase(phase: str | None, running: bool) -> None:
    assert saga_use(saga("buy-video", phase)) == SagaUse("shop", "buy-video", running, at(10))


def test_a_saga_of_its_own_steps_uses_no_template() -> None:
    assert saga_use(saga(None)) is None
    assert saga_use({"metadata": {"namespace": "shop"}, "spec": {"templateRef": "buy-video"}}) is None
    assert saga_use(saga("buy-video", created="not a time")) == SagaUse("shop", "buy-video", True, None)


def test_the_status_counts_the_sagas_and_those_running() -> None:
    uses = [SagaUse("shop", "t", True, at(9)), SagaUse("shop", "t", False, at(11)), SagaUse("shop", "t", False, None)]
    status = template_status(SPEC, 3, uses)
    assert status == SagaTemplateStatus(
        parameters="buyer,video,price,agent,[simulate]", sagas=3, running=1, last_used_at=at(11), observed_generation=3
    )
    assert template_status(SPEC, 1, []) == SagaTemplateStatus(parameters=status.parameters, observed_generation=1)


def test_the_last_use_never_goes_back_when_sagas_are_deleted() -> None:
    before = template_status(SPEC, 1, [SagaUse("shop", "t", False, at(12))])
    after = template_status(SPEC, 1, [SagaUse("shop", "t", True, at(8))], before)
    assert after.last_used_at == at(12) and after.sagas == 1 and after.running == 1


def test_the_patch_sets_the_whole_status_and_deletes_what_became_unset() -> None:
    patch = template_status_patch(template_status(SPEC, None, []))
    assert patch == {
        "status": {
            "parameters": "buyer,video,price,agent,[simulate]",
            "sagas": 0,
            "running": 0,
            "lastUsedAt": None,
            "problem": None,
            "observedGeneration": None,
        }
    }
    # what the API server stores reads back as the same status (the recount compares them)
    written = template_status(SPEC, 2, [SagaUse("shop", "t", True, at(9))])
    stored = {k: v for k, v in template_status_patch(written)["status"].items() if v is not None}
    assert SagaTemplateStatus.model_validate({**stored, "lastUsedAt": "2026-12-01T09:00:00Z"}) == written


def test_a_template_whose_input_reads_a_step_it_does_not_depend_on_has_the_start_refusal_as_its_problem() -> None:
    steps: list[dict[str, Any]] = [
        {"name": "record", "participant": "videos", "action": "record", "compensation": "remove"},
        {
            "name": "debit",
            "participant": "users",
            "action": "debit",
            "compensation": "refund",
            "dependsOn": [],
            "input": {"reference": "${steps.record.result.id}", "who": "${payload.buyer}"},
        },
        {"name": "credit", "participant": "agents", "action": "credit", "input": {"debit": "${steps.debit.input}"}},
    ]
    assert template_problem({**SPEC, "steps": steps}) == (
        "InvalidInput: step debit: input.reference: ${steps.record.result.id} refers to step record, which step "
        "debit does not depend on (directly or through others)"
    )
    steps[1]["dependsOn"] = ["record"]
    assert template_problem({**SPEC, "steps": steps}) is None  # the pivot depends on every other step
    steps[2]["input"] = {"x": "${steps.nowhere.result}"}
    assert template_problem({**SPEC, "steps": steps}) == (
        "InvalidInput: step credit: input.x: ${steps.nowhere.result} refers to step nowhere, which is not a step of "
        "this saga"
    )
    assert (
        template_problem({"steps": []})
        == "InvalidTemplate: spec.steps: List should have at least 1 item after validation, not 0"
    )
    status = template_status(SPEC, 1, [], problem="InvalidInput: ...")
    assert (
        status.problem == "InvalidInput: ..."
        and template_status_patch(status)["status"]["problem"] == "InvalidInput: ..."
    )
