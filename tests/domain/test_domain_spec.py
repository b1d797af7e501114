"""The spec's own rules: what a Saga may say (the CRD's CEL rules, again in pydantic) and what it means."""

from __future__ import annotations

import pytest
from domain_support import pivot, saga_spec, step
from pydantic import ValidationError

from saga_operator.domain.model import RetryPolicy, SagaSpec


def test_a_plain_spec_is_valid_and_its_steps_run_in_order() -> None:
    spec = saga_spec(step("a"), step("b"), pivot("c"))
    assert spec.dependencies() == {"a": (), "b": ("a",), "c": ("b",)}


def test_duplicate_step_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="step names must be unique"):
        saga_spec(step("a"), step("b"), step("a"))


def test_only_the_last_step_may_lack_a_compensation() -> None:
    saga_spec(step("a"), pivot("b"))  # the pivot: fine
    saga_spec(pivot("only"))  # a single step may be its own pivot
    with pytest.raises(ValidationError, match="only the last step"):
        saga_spec(step("a"), pivot("b"), step("c"))
    with pytest.raises(ValidationError, match="only the last step"):
        saga_spec(pivot("a"), pivot("b"))


@pytest.mark.parametrize(
    ("depends_on", "why"),
    [
        (["c"], "a later step"),
        (["b"], "itself"),
        (["nope"], "an unknown step"),
    ],
)
def test_depends_on_must_name_an_earlier_step(depends_on: list[str], why: str) -> None:
    with pytest.raises(ValidationError, match="dependsOn"):
        saga_spec(step("a"), step("b", depends_on=depends_on), step("c"))


def test_depends_on_fills_in_the_previous_step_only_when_left_out() -> None:
    spec = saga_spec(
        step("a"),
        step("b", depends_on=[]),  # a second root: runs alongside a
        step("c", depends_on=["a", "b"]),
        step("d"),  # left out: after c
    )
    assert spec.dependencies() == {"a": (), "b": (), "c": ("a", "b"), "d": ("c",)}


def test_a_spec_needs_at_least_one_step_and_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        SagaSpec(steps=[])
    with pytest.raises(ValidationError):
        SagaSpec.model_validate({"steps": [{"name": "a", "participant": "p", "action": "x", "bogus": 1}]})


def test_the_spec_reads_camel_case_manifests() -> None:
    spec = SagaSpec.model_validate(
        {
            "steps": [
                {"name": "a", "participant": "p", "action": "x", "compensation": "y", "timeoutSeconds": 5},
                {"name": "b", "participant": "p", "action": "x", "dependsOn": ["a"], "retry": {"limit": 0}},
            ],
            "compensationAttemptLimit": 3,
        }
    )
    assert spec.steps[0].timeout_seconds == 5
    assert spec.steps[1].retry.limit == 0
    assert spec.compensation_attempt_limit == 3


def test_backoff_doubles_from_the_first_wait_and_is_capped() -> None:
    policy = RetryPolicy(limit=10, backoff_seconds=1, max_backoff_seconds=5)
    assert [policy.backoff(attempt) for attempt in range(1, 7)] == [1, 2, 4, 5, 5, 5]
    assert RetryPolicy(backoff_seconds=3, max_backoff_seconds=100).backoff(3) == 12
    assert RetryPolicy(backoff_seconds=0).backoff(5) == 0
