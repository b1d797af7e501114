"""The life of one step, as one table: from which state which event leads where.

`transition` decides *which* event applies to a step (a reply, a deadline, the undo, a person's retry);
this module decides whether that event is a legal move from where the step is, and where it leads.
`move` is the only writer of `StepStatus.state`, and it rejects every pair the table does not hold with
`IllegalStepMove`. An illegal move is a bug in the core, never a participant's doing: replies that make
no sense for a step are set aside before a move is asked for (`ReplyIgnored`), and a bug that reaches
the log would be written before its effects, so it is stopped here, before the write.

The table is also the picture: `python -m saga_operator.domain.lifecycle --mermaid` renders it as a
state diagram, which `make generate` writes into docs/architecture.md (a test fails when it drifts).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final

from saga_operator.domain.model import StepState, StepStatus


class StepEvent(StrEnum):
    """What happens to a step. The action side first, then the compensation side."""

    DISPATCH = "Dispatch"  # the steps it depends on have succeeded: its first attempt is sent
    SUCCEED = "Succeed"  # the participant applied the action (any attempt: they share one idempotency key)
    REFUSE = "Refuse"  # the participant refused the action for a business reason: nothing was applied
    ATTEMPT_FAILED = "AttemptFailed"  # no reply in time, or a transient error, and attempts are left
    RETRY_DUE = "RetryDue"  # the backoff is over: the next attempt is sent
    GIVE_UP = "GiveUp"  # the last allowed attempt failed too: whether the action was applied is unknown
    SKIP = "Skip"  # the saga is being undone before the step started
    INPUT_FAILED = "InputFailed"  # its input could not be evaluated: nothing was sent, nothing to undo
    COMPENSATION_DISPATCH = "CompensationDispatch"  # every step that depends on it is settled: undo it
    # Undone after a restart from a log written behind: the step may have been sent unrecorded, so it is
    # compensated, not skipped (a compensation of an action that never arrived leaves a tombstone).
    COMPENSATE_UNRECORDED = "CompensateUnrecorded"
    COMPENSATED = "Compensated"  # the participant confirmed the compensation
    COMPENSATION_ATTEMPT_FAILED = "CompensationAttemptFailed"  # no reply in time, or an error: try again
    COMPENSATION_RETRY_DUE = "CompensationRetryDue"  # the backoff is over: the compensation is sent again
    RETRY_GRANTED = "RetryGranted"  # a person annotated the Failed saga: the stuck command is sent again


S = StepState
E = StepEvent

# Every legal move, and only those. Insertion order is the order of the diagram.
MOVES: Final[Mapping[tuple[StepState, StepEvent], StepState]] = MappingProxyType(
    {
        # ---- the action
        (S.PENDING, E.DISPATCH): S.DISPATCHED,
        (S.DISPATCHED, E.SUCCEED): S.SUCCEEDED,
        (S.DISPATCHED, E.REFUSE): S.REFUSED,
        (S.DISPATCHED, E.ATTEMPT_FAILED): S.RETRYING,
        (S.DISPATCHED, E.GIVE_UP): S.ABANDONED,
        (S.RETRYING, E.RETRY_DUE): S.DISPATCHED,
        # While a step waits for its next attempt, the answer to an earlier one still counts.
        (S.RETRYING, E.SUCCEED): S.SUCCEEDED,
        (S.RETRYING, E.REFUSE): S.REFUSED,
        # Only the pivot (no compensation) is retried after giving up; any other step is compensated.
        (S.ABANDONED, E.RETRY_GRANTED): S.DISPATCHED,
        # Its input is evaluated before its first command: a failure there sends nothing.
        (S.PENDING, E.INPUT_FAILED): S.REFUSED,
        # ---- the undo
        (S.PENDING, E.SKIP): S.SKIPPED,
        (S.PENDING, E.COMPENSATE_UNRECORDED): S.COMPENSATING,
        (S.SUCCEEDED, E.COMPENSATION_DISPATCH): S.COMPENSATING,
        # Applied or not, nobody knows: compensating is safe (compensations are idempotent, and the
        # participant refuses an action that arrives after its compensation).
        (S.DISPATCHED, E.COMPENSATION_DISPATCH): S.COMPENSATING,
        (S.RETRYING, E.COMPENSATION_DISPATCH): S.COMPENSATING,
        (S.ABANDONED, E.COMPENSATION_DISPATCH): S.COMPENSATING,
        (S.COMPENSATING, E.COMPENSATED): S.COMPENSATED,
        (S.COMPENSATING, E.COMPENSATION_ATTEMPT_FAILED): S.COMPENSATION_RETRYING,
        (S.COMPENSATION_RETRYING, E.COMPENSATION_RETRY_DUE): S.COMPENSATING,
        (S.COMPENSATION_RETRYING, E.COMPENSATED): S.COMPENSATED,
        # A compensation is never given up, only paused for a person (the saga is Failed, the step stays
        # where it is); a granted retry sends it once more.
        (S.COMPENSATING, E.RETRY_GRANTED): S.COMPENSATING,
        (S.COMPENSATION_RETRYING, E.RETRY_GRANTED): S.COMPENSATING,
    }
)

# What a state means to the rest of the saga.
# Nothing left to undo: a step that depends on this one does not hold up its compensation.
SETTLED: Final = frozenset({S.PENDING, S.SKIPPED, S.REFUSED, S.COMPENSATED})
# Effects that may exist at the participant and are not undone yet: the states a compensation starts from.
TO_UNDO: Final = frozenset({S.SUCCEEDED, S.DISPATCHED, S.RETRYING, S.ABANDONED})
# What `status.currentStep` names: a command is out or due again, or (Abandoned) the outcome is unknown
# and the step waits for its compensation, or for a person.
IN_FLIGHT: Final = frozenset({S.DISPATCHED, S.RETRYING, S.COMPENSATING, S.COMPENSATION_RETRYING, S.ABANDONED})


class IllegalStepMove(Exception):
    """The core asked for a move the table does not hold: a bug, refused before it reaches the log."""

    def __init__(self, step: str, from_state: StepState, event: StepEvent) -> None:
        super().__init__(f"step {step}: no move from {from_state} on {event}")
        self.step = step
        self.from_state = from_state
        self.event = event


def next_state(step: str, state: StepState, event: StepEvent) -> StepState:
    """Where `event` leads a step that is in `state`; `IllegalStepMove` if the table has no such move."""
    try:
        return MOVES[(state, event)]
    except KeyError:
        raise IllegalStepMove(step, state, event) from None


def move(record: StepStatus, event: StepEvent) -> None:
    """Move one step by `event`. The only place that writes a step's state."""
    record.state = next_state(record.name, record.state, event)


# ---- the diagram ----------------------------------------------------------------------------------

BEGIN_MARKER: Final = "<!-- BEGIN step-lifecycle: generated by `make generate` from saga_operator.domain.lifecycle -->"
END_MARKER: Final = "<!-- END step-lifecycle -->"


def mermaid() -> str:
    """The table as a Mermaid state diagram: one arrow per move. A state no move leaves is marked final."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {StepState.PENDING.value}"]
    lines += [f"    {state.value} --> {target.value}: {event.value}" for (state, event), target in MOVES.items()]
    left = {state for state, _ in MOVES}
    lines += [f"    {state.value} --> [*]" for state in StepState if state not in left]
    lines.append("```")
    return "\n".join(lines) + "\n"


def generated_block(document: str) -> str:
    """What stands between the markers in `document` (ValueError if they are missing)."""
    found = re.search(re.escape(BEGIN_MARKER) + r"\n(.*?)" + re.escape(END_MARKER), document, re.DOTALL)
    if found is None:
        raise ValueError(f"no {BEGIN_MARKER!r} ... {END_MARKER!r} block")
    return found.group(1)


def with_diagram(document: str) -> str:
    """`document` with the block between the markers replaced by the current diagram."""
    old = f"{BEGIN_MARKER}\n{generated_block(document)}{END_MARKER}"
    return document.replace(old, f"{BEGIN_MARKER}\n{mermaid()}{END_MARKER}", 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m saga_operator.domain.lifecycle", description="The step lifecycle table as a diagram."
    )
    parser.add_argument("--mermaid", action="store_true", required=True, help="render it as a Mermaid diagram")
    parser.add_argument("--into", type=Path, help="write it between the step-lifecycle markers of this file")
    args = parser.parse_args(argv)
    if args.into is None:
        sys.stdout.write(mermaid())
        return
    args.into.write_text(with_diagram(args.into.read_text()))


if __name__ == "__main__":
    main()
