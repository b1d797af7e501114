"""The saga's conditions, `Completed` and `Succeeded`: the phase told the way Kubernetes tools read it.

They follow the Kubernetes API conventions (the shape of metav1.Condition): a `type`, a `status` of True,
False or Unknown, a CamelCase `reason`, a `message`, the `observedGeneration` they were computed from and a
`lastTransitionTime` that moves only when the status does.

They are derived from the log on every transition (`derive_conditions`), never decided on their own, so
they cannot disagree with the phase:

| phase        | Completed | Succeeded | reason (both)                       |
|--------------|-----------|-----------|-------------------------------------|
| Running      | False     | Unknown   | Running                             |
| Compensating | False     | Unknown   | Compensating                        |
| Succeeded    | True      | True      | Succeeded                           |
| Compensated  | True      | False     | Compensated                         |
| Failed       | True      | False     | the saga's reason (CompensationStuck, ...) |
| Rejected     | True      | False     | the saga's reason (InvalidSpec, ...)       |

`Succeeded` stays Unknown while the saga compensates: it turns False only when the saga ends without
succeeding (a compensating saga may still end Succeeded, when the pivot's success arrives after an abort).
`Completed` is the one to wait for when any end will do (`kubectl wait --for=condition=Completed`), as a
Job's `Complete` and `Failed` together; a person's retry of a Failed saga sets it back to False.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from saga_operator.domain.model import TERMINAL_PHASES, Condition, ConditionStatus, Phase, SagaStatus


class ConditionType(StrEnum):
    # True once the saga is in a terminal phase (Succeeded, Compensated, Failed, Rejected), False while it runs.
    COMPLETED = "Completed"
    # True when every step has succeeded; False once the saga ended otherwise; Unknown until it ends.
    SUCCEEDED = "Succeeded"


#: The message of a condition when the status has none, per phase.
_DEFAULT_MESSAGES = {
    Phase.RUNNING: "the steps are running",
    Phase.SUCCEEDED: "every step succeeded",
    Phase.COMPENSATING: "the completed steps are being undone",
    Phase.COMPENSATED: "the completed steps were undone",
}


def condition_reason(status: SagaStatus) -> str:
    """The CamelCase reason of every condition: the phase, or the saga's own reason once it Failed or was
    Rejected (those always name one)."""
    if status.phase in (Phase.FAILED, Phase.REJECTED) and status.reason:
        return status.reason
    return status.phase.value


def desired(status: SagaStatus) -> dict[ConditionType, ConditionStatus]:
    """The status of each condition for the phase (the table above)."""
    terminal = status.phase in TERMINAL_PHASES
    if status.phase == Phase.SUCCEEDED:
        succeeded = ConditionStatus.TRUE
    elif terminal:
        succeeded = ConditionStatus.FALSE
    else:
        succeeded = ConditionStatus.UNKNOWN
    return {
        ConditionType.COMPLETED: ConditionStatus.TRUE if terminal else ConditionStatus.FALSE,
        ConditionType.SUCCEEDED: succeeded,
    }


def derive_conditions(status: SagaStatus, now: datetime) -> None:
    """Set every condition from the phase. Nothing before the saga has started (phase Pending)."""
    if status.phase == Phase.PENDING:
        return
    for type_, value in desired(status).items():
        _set(status, type_, value, now)


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
    reason = condition_reason(status)
    message = status.message or _DEFAULT_MESSAGES.get(status.phase, "")
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
