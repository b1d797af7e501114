"""`kubectl saga why`: the cause of where a saga is, in one sentence, what to do, and where the runbook says
more (a section of docs/operations.md). Pure: it reads the Saga's status only.

Every reason the operator writes into `status.reason` has an entry in `REASONS` (a test checks the
operator's reasons against it, and each anchor against docs/operations.md's headings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from saga_operator.domain import integrity
from saga_operator.domain.model import Phase, SagaStatus, StepState

DOC: Final = "docs/operations.md"


@dataclass(frozen=True)
class Advice:
    todo: str
    anchor: str  # a heading's anchor in docs/operations.md


_WILL_NOT_RUN: Final = "sagas-the-operator-will-not-run"
_BY_HAND: Final = (
    "settle its effects by hand (kubectl saga describe shows which steps hold effects), then delete it with "
    "saga.dev/delete-without-compensation"
)
#: status.reason -> what a person does about it.
REASONS: Final[dict[str, Advice]] = {
    "CompensationStuck": Advice(
        "fix the participant whose compensation fails (its pods, logs and /readyz), then grant another round: "
        "kubectl saga retry NAME",
        "phase-failed-reason-compensationstuck",
    ),
    "PivotOutcomeUnknown": Advice(
        "find out at the participant whether the last step happened (idempotency key <saga uid>/<step>); if it "
        "did or should, kubectl saga retry NAME sends it again with the same key",
        "phase-failed-reason-pivotoutcomeunknown",
    ),
    integrity.INVALID_SPEC: Advice(
        "fix the field status.message names and create the saga again under a new name",
        "phase-rejected-reason-invalidspec",
    ),
    integrity.PAYLOAD_TOO_LARGE: Advice(
        "make spec.payload smaller (pass a reference, not the data) and create the saga again", _WILL_NOT_RUN
    ),
    integrity.PAYLOAD_TOO_DEEP: Advice("nest spec.payload less deeply and create the saga again", _WILL_NOT_RUN),
    integrity.UNKNOWN_PARTICIPANT: Advice(
        "fix the step's participant name, or add the participant to the operator's SAGA_PARTICIPANTS", _WILL_NOT_RUN
    ),
    integrity.SPEC_STATUS_MISMATCH: Advice(
        f"put the spec back as it was (status.steps names the steps); {_BY_HAND}", _WILL_NOT_RUN
    ),
    integrity.CORRUPT_STATUS: Advice(_BY_HAND, _WILL_NOT_RUN),
    integrity.ILLEGAL_STEP_MOVE: Advice(
        f"a bug in the operator: report it with the saga's YAML and the operator's log; {_BY_HAND}", _WILL_NOT_RUN
    ),
    integrity.STATUS_TAMPERED: Advice(
        "find out who wrote the status (kubectl get saga NAME --show-managed-fields -o yaml); to adopt it on "
        "purpose use the break-glass annotation saga.dev/accept-status",
        _WILL_NOT_RUN,
    ),
    integrity.STATUS_TOO_LARGE: Advice(f"keep step results small; {_BY_HAND}", _WILL_NOT_RUN),
    integrity.COMMAND_TOO_LARGE: Advice(
        "make spec.payload smaller; then kubectl saga retry NAME sends the stuck compensation again", _WILL_NOT_RUN
    ),
    integrity.RESULTS_TOO_LARGE: Advice("make the participant's results smaller", _WILL_NOT_RUN),
}


@dataclass(frozen=True)
class Why:
    cause: str  # one sentence
    todo: str
    anchor: str

    @property
    def link(self) -> str:
        return f"{DOC}#{self.anchor}"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _stuck_steps(status: SagaStatus) -> str:
    waiting = [
        f"{r.name} ({r.error.reason})"
        for r in status.steps
        if r.error is not None and r.state in (StepState.RETRYING, StepState.COMPENSATION_RETRYING)
    ]
    return ", ".join(waiting)


def explain(name: str, status: SagaStatus) -> Why:
    """Why saga `name` is where it is, and what a person does about it."""
    phase, message = status.phase, status.message or ""
    if phase in (Phase.FAILED, Phase.REJECTED):
        reason = status.reason or "Unknown"
        advice = REASONS.get(reason, Advice("read the operator's log and the saga's Events", "a-stuck-saga"))
        return Why(
            _sentence(f"{name} is {phase.value} ({reason}): {message.removeprefix(reason + ': ')}"),
            advice.todo,
            advice.anchor,
        )
    if phase == Phase.PENDING:
        return Why(
            f"{name} has not started: no operator has picked it up yet.",
            "check that the operator runs and watches this namespace (its /readyz and log)",
            "health-and-metrics",
        )
    if phase == Phase.SUCCEEDED:
        cause = f"{name} succeeded: {message}." if message else f"{name} succeeded: every step succeeded."
        return Why(cause, "nothing", "watching-sagas")
    if phase == Phase.COMPENSATED:
        return Why(
            _sentence(f"{name} was undone because {message or 'it was aborted'}; progress {status.progress}"),
            "nothing to undo: every step that took effect is compensated; fix the cause and create a new saga",
            "watching-sagas",
        )
    retrying = _stuck_steps(status)
    if phase == Phase.COMPENSATING:
        cause = f"{name} is being undone because {message or 'it was aborted'}"
        if retrying:
            return Why(
                _sentence(f"{cause}; compensation retried: {retrying}"),
                "the participant is down or failing: look at its pods, logs and /readyz; the next retry goes through",
                "phase-compensating-for-a-long-time",
            )
        return Why(_sentence(cause), "nothing: wait (kubectl wait --for=condition=Completed)", "watching-sagas")
    step = status.current_step or "its next step"
    if retrying:
        return Why(
            f"{name} is running; its step is being retried: {retrying}.",
            "look at the participant of that step (pods, logs, /readyz); once its retries are used up the saga "
            "compensates",
            "a-stuck-saga",
        )
    return Why(
        f"{name} is running: {step} is in flight.",
        "nothing: wait (kubectl wait --for=condition=Completed)",
        "watching-sagas",
    )
