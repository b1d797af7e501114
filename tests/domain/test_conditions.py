"""The saga's conditions (saga_operator.domain.conditions): which exist, what `kubectl explain` says about
them, and the spec generation each one records."""

from __future__ import annotations

import re

from domain_support import COMPENSATION, SAGA_UID, T0, Saga, at, reply, saga_spec, step

from saga_operator import crd
from saga_operator.domain.conditions import ConditionType
from saga_operator.domain.events import ReplyReceived, Start, Tick
from saga_operator.domain.model import Condition, Phase, SagaStatus
from saga_operator.domain.transition import transition
from saga_protocol import Outcome

SPEC = saga_spec(step("a"), step("b"))


def generations(status: SagaStatus) -> dict[str, int | None]:
    return {condition.type: condition.observed_generation for condition in status.conditions}


def test_the_type_description_names_every_condition_type_and_no_other() -> None:
    description = Condition.model_fields["type"].description or ""
    named = set(re.findall(r"\b([A-Z][a-z]+): (?:True|False)", description))
    assert named == {str(kind) for kind in ConditionType}


def test_the_core_sets_exactly_the_condition_types_once_the_saga_has_started() -> None:
    assert transition(SPEC, SagaStatus(), Tick(T0), uid=SAGA_UID)[0].conditions == []  # Pending: none yet
    status, _ = transition(SPEC, SagaStatus(), Start(T0), uid=SAGA_UID)
    assert sorted(c.type for c in status.conditions) == sorted(ConditionType)


def test_every_condition_records_the_spec_generation_of_the_write_that_last_changed_the_status() -> None:
    status, _ = transition(SPEC, SagaStatus(), Start(T0), generation=3, uid=SAGA_UID)
    assert status.observed_generation == 3
    assert generations(status) == {"Completed": 3, "Succeeded": 3}

    # Nothing changes (no deadline is due): nothing is written, so nothing new is recorded.
    same, _ = transition(SPEC, status, Tick(at(1)), generation=4, uid=SAGA_UID)
    assert same == status

    # A change: every condition records the generation, also the ones whose status did not change.
    status, _ = transition(SPEC, status, ReplyReceived(reply(SPEC, "a"), at(2)), generation=4, uid=SAGA_UID)
    assert status.seq == 2 and status.observed_generation == 4
    assert generations(status) == {"Completed": 4, "Succeeded": 4}
    completed = next(c for c in status.conditions if c.type == ConditionType.COMPLETED)
    assert (completed.status.value, completed.last_transition_time) == ("False", T0)

    # No generation given: the one recorded stays, on the status and on every condition.
    status, _ = transition(SPEC, status, ReplyReceived(reply(SPEC, "b"), at(3)), uid=SAGA_UID)
    assert status.phase == Phase.SUCCEEDED and status.observed_generation == 4
    assert generations(status) == {"Completed": 4, "Succeeded": 4}


# ---- the API conventions ----------------------------------------------------------------------------

REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition's reason pattern


def conditions(status: SagaStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status.value, c.reason, c.message) for c in status.conditions}


def transition_times(status: SagaStatus) -> dict[str, object]:
    return {c.type: c.last_transition_time for c in status.conditions}


def test_succeeded_stays_unknown_while_compensating_and_turns_false_only_when_the_saga_ends() -> None:
    saga = Saga(saga_spec(step("a"), step("b")))
    saga.start()
    saga.at(1)
    saga.succeed("a")
    saga.at(2)
    saga.reply("b", Outcome.FAILED, reason="InsufficientFunds")
    assert saga.status.phase == Phase.COMPENSATING
    message = "step b refused: InsufficientFunds"
    assert conditions(saga.status) == {
        "Completed": ("False", "Compensating", message),
        "Succeeded": ("Unknown", "Compensating", message),
    }
    assert transition_times(saga.status) == {"Completed": T0, "Succeeded": T0}  # no status changed since start

    saga.at(3)
    saga.compensated("a")
    assert saga.status.phase.value == "Compensated"
    assert conditions(saga.status) == {
        "Completed": ("True", "Compensated", message),
        "Succeeded": ("False", "Compensated", message),
    }
    assert transition_times(saga.status) == {"Completed": at(3), "Succeeded": at(3)}


def test_a_failed_saga_s_conditions_carry_its_reason_and_a_retry_sets_completed_back_to_false() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), compensation_attempt_limit=1))
    saga.start()
    saga.succeed("a")
    saga.reply("b", Outcome.FAILED)
    saga.at(5)
    saga.reply("a", Outcome.ERROR, kind=COMPENSATION)
    assert saga.status.phase == Phase.FAILED
    (completed, c_reason, _), (succeeded, s_reason, _) = conditions(saga.status).values()
    assert (completed, c_reason, succeeded, s_reason) == ("True", "CompensationStuck", "False", "CompensationStuck")
    assert transition_times(saga.status) == {"Completed": at(5), "Succeeded": at(5)}

    saga.at(9)
    saga.retry("again")
    assert [(c.type, c.status.value, c.reason) for c in saga.status.conditions] == [
        ("Completed", "False", "Compensating"),
        ("Succeeded", "Unknown", "Compensating"),
    ]
    assert transition_times(saga.status) == {"Completed": at(9), "Succeeded": at(9)}


def test_last_transition_time_moves_only_when_the_status_does() -> None:
    saga = Saga(saga_spec(step("a"), step("b"), step("c")))
    saga.start()
    saga.at(1)
    saga.succeed("a")
    saga.at(2)
    saga.abort()  # the reason and the message change, the statuses do not
    assert [(c.status.value, c.reason) for c in saga.status.conditions] == [
        ("False", "Compensating"),
        ("Unknown", "Compensating"),
    ]
    assert transition_times(saga.status) == {"Completed": T0, "Succeeded": T0}


def test_every_condition_has_the_shape_of_metav1_condition_in_every_phase() -> None:
    runs = []
    ok = Saga(saga_spec(step("a")))
    ok.start()
    runs.append(ok.status)
    ok.succeed("a")
    runs.append(ok.status)
    undone = Saga(saga_spec(step("a"), step("b")))
    undone.start()
    undone.succeed("a")
    undone.abort()
    runs.append(undone.status)
    undone.compensated("b", "a")
    runs.append(undone.status)
    rejected, _ = transition(
        saga_spec(step("a")).model_copy(update={"payload": {"x": "y" * 70_000}}), SagaStatus(), Start(T0), uid=SAGA_UID
    )
    runs.append(rejected)
    phases = [status.phase for status in runs]
    assert phases == [Phase.RUNNING, Phase.SUCCEEDED, Phase.COMPENSATING, Phase.COMPENSATED, Phase.REJECTED]
    for status in runs:
        assert [c.type for c in status.conditions] == ["Completed", "Succeeded"]
        for c in status.conditions:
            assert REASON.match(c.reason), c.reason
            assert c.message, (status.phase, c.type)
            assert c.status.value in ("True", "False", "Unknown")
    assert rejected.conditions[0].reason == "PayloadTooLarge"


def test_the_crd_keeps_conditions_as_a_map_keyed_by_type_with_metav1_condition_s_required_fields() -> None:
    status = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"
    ]
    schema = status["properties"]["conditions"]
    assert (schema["x-kubernetes-list-type"], schema["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    item = schema["items"]
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["reason"]["pattern"] == REASON.pattern
