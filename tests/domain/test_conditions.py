"""The saga's conditions (saga_operator.domain.conditions): which exist, what `kubectl explain` says about
them, and the spec generation each one records."""

from __future__ import annotations

import re

from domain_support import SAGA_UID, T0, at, reply, saga_spec, step

from saga_operator.domain.conditions import ConditionType
from saga_operator.domain.events import ReplyReceived, Start, Tick
from saga_operator.domain.model import Condition, Phase, SagaStatus
from saga_operator.domain.transition import transition

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
