"""The saga's conditions, `Completed` and `Succeeded`: the phase told the way Kubernetes tools read it.

They are derived from the log on every transition (`derive_conditions`), never decided on their own, so
they cannot disagree with the phase. They serve `kubectl wait --for=condition=Completed` and any tool
that reads conditions rather than a resource's own phase. Each one records the spec generation it was
computed from (`observe_generation`), as the API conventions ask: a condition whose observedGeneration
is behind `metadata.generation` has not seen the latest spec yet.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from saga_operator.domain.model import TERMINAL_PHASES, Condition, ConditionStatus, Phase, SagaStatus


class ConditionType(StrEnum):
    # True once the saga is in a terminal phase (Succeeded, Compensated, Failed), False while it runs;
    # a person's retry of a Failed saga sets it back to False.
    COMPLETED = "Completed"
    # True when every step has succeeded; False while the saga is being undone or once it ended
    # otherwise; Unknown while it still may succeed.
    SUCCEEDED = "Succeeded"


def derive_conditions(status: SagaStatus, now: datetime) -> None:
    """Set every condition from the phase. The reason is the phase, the message the status's message."""
    terminal = status.phase in TERMINAL_PHASES
    completed = ConditionStatus.TRUE if terminal else ConditionStatus.FALSE
    if status.phase == Phase.SUCCEEDED:
        succeeded = ConditionStatus.TRUE
    elif terminal or status.undoing:
        succeeded = ConditionStatus.FALSE
    else:
        succeeded = ConditionStatus.UNKNOWN
    _set(status, ConditionType.COMPLETED, completed, now)
    _set(status, ConditionType.SUCCEEDED, succeeded, now)


def observe_generation(status: SagaStatus, generation: int | None) -> None:
    """Record on the status and on every condition the spec generation they were computed from.

    Every condition, not only the ones that changed: all of them are derived again on every transition,
    so each is as recent as the status. None keeps the generation already recorded.
    """
    if generation is not None:
        status.observed_generation = generation
    for condition in status.conditions:
        condition.observed_generation = status.observed_generation


def _set(status: SagaStatus, type_: ConditionType, value: ConditionStatus, now: datetime) -> None:
    """Add or update one condition. Its lastTransitionTime moves only when its status does (a new reason or
    message alone keeps the time), as `kubectl` and the API conventions expect."""
    reason, message = status.phase.value, status.message or ""
    for index, condition in enumerate(status.conditions):
        if condition.type != type_:
            continue
        if (condition.status, condition.reason, condition.message) == (value, reason, message):
            return
        changed = condition.status != value
        status.conditions[index] = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now if changed else condition.last_transition_time,
            observed_generation=condition.observed_generation,
        )
        return
    status.conditions.append(
        Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=now)
    )
