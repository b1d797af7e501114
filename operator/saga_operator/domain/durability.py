"""When the log must be written before the effects, and when it may be written behind them.

The saga rules need the log ahead of the world only where a crash could otherwise lose something that
cannot be found again (docs/architecture.md, "Writing the log behind"). A transition's new status must be
written *before* its effects when it:

- sends the pivot's action (`PIVOT`): the pivot cannot be undone, so the log must never show it Pending
  after it was sent (recovery treats every Pending step but the pivot as maybe dispatched);
- decides to undo (`UNDO`, `undoing` turns true): a timeout or a give-up depends on the clock, an abort
  on the spec at that moment; once compensations go out, the decision must survive a crash;
- sends another attempt of a command, or acts on a person's retry (`RETRY`): a reply to attempt k then
  always finds attempt k in the log (so no true answer is ever dead-lettered as `FutureAttempt`), and a
  retry token is acted on once;
- ends the saga (`END`): `kubectl wait`, the finalizer and people act on a terminal phase.

Everything else (the start, dispatches of compensable steps, their successes, a timeout that leaves
attempts, compensation progress once the undo is recorded, a resume) may be written behind and coalesced:
it is re-derived after a crash by sending the same commands again with the same idempotency keys, and by
treating the steps the log may not show as maybe dispatched (`maybe_dispatched`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from saga_operator.domain.events import Effect, SendCommand
from saga_operator.domain.model import TERMINAL_PHASES, SagaSpec, SagaStatus, StepState, effective_spec
from saga_protocol import CommandKind


class WriteCause(StrEnum):
    """Why a status is written now (the label of saga_operator_status_writes_by_cause_total)."""

    PIVOT = "pivot"
    UNDO = "undo"
    RETRY = "retry"
    END = "end"
    # Not a reason to write ahead: the shell's own flushes of a status written behind.
    COALESCED = "coalesced"
    # Every change, in strict mode (SAGA_STATUS_WRITES=strict).
    STRICT = "strict"


def write_ahead_cause(spec: SagaSpec, old: SagaStatus, new: SagaStatus, effects: Sequence[Effect]) -> WriteCause | None:
    """Why `new` must be durably written before `effects` are performed; None: it may be written behind."""
    if new.phase in TERMINAL_PHASES and new.phase != old.phase:
        return WriteCause.END
    if new.undoing and not old.undoing:
        return WriteCause.UNDO
    if new.retries_granted != old.retries_granted or new.retry_token != old.retry_token:
        return WriteCause.RETRY
    spec = effective_spec(spec, new)  # a templated saga runs the steps its status records
    pivot = spec.steps[-1].name if spec.steps and spec.steps[-1].compensation is None else None
    for effect in effects:
        if not isinstance(effect, SendCommand):
            continue
        if effect.kind == CommandKind.ACTION and effect.step == pivot:
            return WriteCause.PIVOT
        if effect.attempt > 1:
            return WriteCause.RETRY
    return None


#: States from which a step's dependents may have been dispatched: the step's action went out at some point
#: (Refused: it went out and was refused, so nothing after it ever did).
_REACHED = frozenset(
    {
        StepState.DISPATCHED,
        StepState.RETRYING,
        StepState.SUCCEEDED,
        StepState.ABANDONED,
        StepState.COMPENSATING,
        StepState.COMPENSATION_RETRYING,
        StepState.COMPENSATED,
    }
)


def maybe_dispatched(spec: SagaSpec, status: SagaStatus) -> set[str]:
    """The Pending steps whose action may have been sent without the log recording it, in a saga resumed from a
    log written behind (`status.resumedBehind`); empty for any other.

    A Pending step may have been sent when each step it depends on may have been: its action went out (a state
    in `_REACHED`), or it is itself maybe dispatched (transitively: a line s0, s1, s2 with s0 Dispatched in the
    log may have run s1 and s2 too). The pivot never is: its dispatch is always written ahead."""
    if not status.resumed_behind:
        return set()
    spec = effective_spec(spec, status)
    states = {record.name: record.state for record in status.steps}
    maybe: set[str] = set()
    dependencies = spec.dependencies()
    for step in spec.steps:  # spec order: a step's prerequisites come before it
        if step.compensation is None or states.get(step.name) != StepState.PENDING:
            continue
        if all(states.get(need) in _REACHED or need in maybe for need in dependencies[step.name]):
            maybe.add(step.name)
    return maybe
