"""What the operator checks before it acts on a saga: that the log it reads is one it can act on.

A spec and a status that do not match (a step renamed, removed or added while the saga runs, a record
missing, the same record twice), a status that does not parse, a payload over the protocol's limits, a
participant nobody runs: each is named by a reason, and the saga ends in a terminal phase with it instead
of the operator raising (docs/operations.md lists the reasons). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from pydantic import ValidationError

from saga_operator.domain import inputs
from saga_operator.domain.model import SagaSpec, SagaStatus
from saga_protocol.limits import payload_problem

# Phase Failed (a person must act: some steps may hold effects).
SPEC_STATUS_MISMATCH: Final = "SpecStatusMismatch"
CORRUPT_STATUS: Final = "CorruptStatus"
ILLEGAL_STEP_MOVE: Final = "IllegalStepMove"
STATUS_TAMPERED: Final = "StatusTampered"
STATUS_TOO_LARGE: Final = "StatusTooLarge"
# Phase Rejected (nothing was sent: fix the manifest and create the saga again).
INVALID_SPEC: Final = "InvalidSpec"
PAYLOAD_TOO_LARGE: Final = "PayloadTooLarge"
PAYLOAD_TOO_DEEP: Final = "PayloadTooDeep"
UNKNOWN_PARTICIPANT: Final = "UnknownParticipant"
# Step errors (the step fails, the saga is undone).
COMMAND_TOO_LARGE: Final = "CommandTooLarge"
RESULTS_TOO_LARGE: Final = "ResultsTooLarge"

#: Reasons a person's retry annotation cannot cure: retrying would act on a log the operator does not trust.
NOT_RETRYABLE: Final = frozenset({SPEC_STATUS_MISMATCH, CORRUPT_STATUS, ILLEGAL_STEP_MOVE, STATUS_TAMPERED})


def parse_status(raw: Any) -> tuple[SagaStatus | None, str | None]:
    """The stored status as a model, or (None, why it cannot be read). An absent status is an empty one."""
    if raw is None or raw == {}:
        return SagaStatus(), None
    if not isinstance(raw, dict):
        return None, f"status is a {type(raw).__name__}, not an object"
    try:
        return SagaStatus.model_validate(raw), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, f"status.{where}: {first['msg']}" if where else f"status: {first['msg']}"


def stored_seq(raw: Any) -> int:
    """The seq of a status that does not parse, as far as it can be read (0 otherwise)."""
    seq = raw.get("seq") if isinstance(raw, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else 0


def mismatch(spec: SagaSpec, status: SagaStatus) -> tuple[str, str] | None:
    """(reason, message) when the status's step records are not the spec's steps, one each, in order.

    A saga that has not started has no records yet; any other has exactly one per step of its spec."""
    records = [record.name for record in status.steps]
    if not records and status.seq == 0 and status.started_at is None:
        return None  # not started
    if not records:
        return CORRUPT_STATUS, "the status holds no step records"
    twice = sorted({name for name in records if records.count(name) > 1})
    if twice:
        return CORRUPT_STATUS, f"the status holds more than one record of step {twice[0]}"
    names = [step.name for step in spec.steps]
    unknown = [name for name in records if name not in names]
    if unknown:
        return SPEC_STATUS_MISMATCH, f"the status has step {unknown[0]}, which the spec does not (renamed or removed?)"
    missing = [name for name in names if name not in records]
    if missing:
        return SPEC_STATUS_MISMATCH, f"spec step {missing[0]} has no record in the status (added while running?)"
    if records != names:
        return SPEC_STATUS_MISMATCH, f"the status lists the steps as {records}, the spec as {names}"
    return None


def start_problem(spec: SagaSpec, participants: Collection[str]) -> tuple[str, str] | None:
    """Why a saga must not start at all (reason, message): its payload breaks the protocol's limits, a step
    names a participant not in `participants` (when that collection is not empty), or a step's input can
    never be evaluated (InvalidInput: a syntax error, a reference to a step it does not depend on)."""
    problem = payload_problem(spec.payload)
    if problem is not None:
        kind, detail = problem
        return (PAYLOAD_TOO_DEEP if kind == "TooDeep" else PAYLOAD_TOO_LARGE), detail
    if participants:
        for step in spec.steps:
            if step.participant not in participants:
                known = ", ".join(sorted(participants))
                return UNKNOWN_PARTICIPANT, f"step {step.name}: participant {step.participant!r} is not one of {known}"
    return inputs.problem(spec)
