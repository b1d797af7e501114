"""`kubectl saga describe`: a saga's steps as bars on one time axis, drawn in plain text. Pure.

Each step has up to two bars: its action and its compensation. The times come from the log
(`status.steps`): `dispatchedAt` is the latest send of the action, `compensationDispatchedAt` that of the
compensation. Where a bar's first send is not kept (a later attempt replaced it), its start is derived the way
the operator decides it: an action is sent in the write that records its last prerequisite's success (or the
saga's start), a compensation in the write that settles the last step depending on it.
Readable without colour: the bars are ASCII and a legend says what each mark means.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from saga_operator.domain.model import TERMINAL_PHASES, SagaSpec, SagaStatus, StepState, StepStatus
from saga_operator.domain.summary import human_duration

ACTION_FILL: Final = "="
UNDO_FILL: Final = "-"
LEGEND: Final = (
    "=== action  --- compensation  > succeeded  X refused  ? outcome unknown  < compensated",
    "! stuck (a person must act)  ~ still running  * retried (where the latest attempt was sent)",
)
_UNDO_STATES: Final = frozenset({StepState.COMPENSATING, StepState.COMPENSATION_RETRYING, StepState.COMPENSATED})


@dataclass(frozen=True)
class Bar:
    start: datetime
    end: datetime
    mark: str  # the last cell: how it ended (or ~ while it runs)
    retry_at: datetime | None = None  # where the latest retry was sent (attempts > 1)


@dataclass(frozen=True)
class StepBars:
    name: str
    state: StepState
    action: Bar | None
    undo: Bar | None
    attempts: int
    undo_attempts: int
    error: str | None


def _needs(spec: SagaSpec) -> dict[str, tuple[str, ...]]:
    """Each step's prerequisites as the operator runs them: the pivot (a last step without compensation) after
    every other step."""
    needs = spec.dependencies()
    last = spec.steps[-1]
    if last.compensation is None:
        needs[last.name] = tuple(step.name for step in spec.steps[:-1])
    return needs


def step_bars(spec: SagaSpec, status: SagaStatus, now: datetime) -> list[StepBars]:
    needs = _needs(spec)
    dependents: dict[str, list[str]] = {step.name: [] for step in spec.steps}
    for name, prerequisites in needs.items():
        for need in prerequisites:
            dependents[need].append(name)
    records = {record.name: record for record in status.steps}
    running = status.phase not in TERMINAL_PHASES
    end_of_saga = status.finished_at or now
    out = []
    for record in status.steps:
        action = _action_bar(record, needs.get(record.name, ()), records, status, now, end_of_saga, running)
        undo = _undo_bar(record, dependents.get(record.name, []), records, action, now, end_of_saga, running)
        if action is not None and undo is not None and action.start == action.end and record.finished_at is None:
            # In flight when the undo reached it: the action's bar runs until its compensation was sent.
            action = Bar(action.start, max(action.start, undo.start), action.mark, action.retry_at)
        error = None
        if record.error is not None:
            error = record.error.reason + (f": {record.error.message}" if record.error.message else "")
        out.append(
            StepBars(record.name, record.state, action, undo, record.attempt, record.compensation_attempt, error)
        )
    return out


def _action_bar(
    record: StepStatus,
    needs: tuple[str, ...],
    records: dict[str, StepStatus],
    status: SagaStatus,
    now: datetime,
    end_of_saga: datetime,
    running: bool,
) -> Bar | None:
    if record.attempt == 0:
        return None
    exact = record.attempt == 1 and record.dispatched_at is not None
    if exact:
        assert record.dispatched_at is not None
        start = record.dispatched_at
    else:
        finished = [r.finished_at for n in needs if (r := records.get(n)) is not None and r.finished_at is not None]
        start = max(finished, default=status.started_at or record.dispatched_at or now)
    retry_at = None
    if record.attempt > 1 and record.dispatched_at is not None:
        retry_at = record.dispatched_at
    if record.finished_at is not None:
        mark = {StepState.REFUSED: "X", StepState.ABANDONED: "?"}.get(record.state, ">")
        if record.state in _UNDO_STATES and record.result is None:
            mark = "?"  # given up (or a success without result): either way compensated
        return Bar(start, record.finished_at, mark, retry_at)
    if record.state in (StepState.DISPATCHED, StepState.RETRYING):
        return Bar(start, now if running else end_of_saga, "~" if running else "?", retry_at)
    # Still in flight when the undo began: its outcome is unknown, the compensation covers it.
    return Bar(start, start, "?", retry_at)


def _undo_bar(
    record: StepStatus,
    dependents: list[str],
    records: dict[str, StepStatus],
    action: Bar | None,
    now: datetime,
    end_of_saga: datetime,
    running: bool,
) -> Bar | None:
    if record.compensation_attempt == 0 or record.state not in _UNDO_STATES:
        return None
    if record.compensation_attempt == 1 and record.compensation_dispatched_at is not None:
        start = record.compensation_dispatched_at
    else:
        settled = []
        for name in dependents:
            other = records.get(name)
            if other is None:
                continue
            if other.compensated_at is not None:
                settled.append(other.compensated_at)
            elif other.state == StepState.REFUSED and other.finished_at is not None:
                settled.append(other.finished_at)
        if not settled and action is not None and action.mark == "?" and record.finished_at is not None:
            # Given up: the compensation went out in the same write, at finishedAt.
            settled.append(record.finished_at)
        start = max(settled, default=record.compensation_dispatched_at or now)
    if action is not None:
        start = max(start, action.end)
    retry_at = record.compensation_dispatched_at if record.compensation_attempt > 1 else None
    if record.compensated_at is not None:
        return Bar(start, record.compensated_at, "<", retry_at)
    return Bar(start, now if running else end_of_saga, "~" if running else "!", retry_at)


def _draw(bar: Bar | None, fill: str, t0: datetime, span: float, width: int) -> str:
    cells = [" "] * width
    if bar is None:
        return "".join(cells)

    def pos(at: datetime) -> int:
        return min(width - 1, max(0, round((at - t0).total_seconds() / span * (width - 1))))

    first, last = pos(bar.start), pos(bar.end)
    for index in range(first, last):
        cells[index] = fill
    if bar.retry_at is not None:
        cells[min(pos(bar.retry_at), last)] = "*"
    cells[last] = bar.mark
    return "".join(cells)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def render(spec: SagaSpec, status: SagaStatus, now: datetime, *, width: int = 48) -> list[str]:
    """The timeline's lines: the axis, two lines per step that ran (action, compensation), the legend."""
    bars = step_bars(spec, status, now)
    t0 = status.started_at or now
    end = status.finished_at or now
    for step in bars:
        for bar in (step.action, step.undo):
            if bar is not None:
                t0, end = min(t0, bar.start), max(end, bar.end)
    span = max((end - t0).total_seconds(), 1e-3)
    name_width = max([len("STEP"), *(len(s.name) for s in bars)])
    left = " " * (name_width + 2 + 6 + 2)
    axis = ["-"] * width
    for quarter in range(5):
        axis[round(quarter * (width - 1) / 4)] = "+"
    right_label = human_duration(span)
    labels = "0s".ljust(width - len(right_label)) + right_label
    mid = human_duration(span / 2)
    start_mid = (width - 1) // 2 - len(mid) // 2
    labels = labels[:start_mid] + mid + labels[start_mid + len(mid) :]
    lines = [
        f"{'STEP'.ljust(name_width)}  {'':6}  {labels}",
        f"{left}{''.join(axis)}",
    ]
    for step in bars:
        detail = f"{step.state.value}, {_plural(step.attempts, 'attempt')}"
        if step.attempts == 0:
            detail = step.state.value
        lines.append(
            f"{step.name.ljust(name_width)}  {'action':6}  {_draw(step.action, ACTION_FILL, t0, span, width)}  {detail}"
        )
        if step.undo is not None:
            undo_detail = _plural(step.undo_attempts, "attempt")
            lines.append(
                f"{''.ljust(name_width)}  {'undo':6}  {_draw(step.undo, UNDO_FILL, t0, span, width)}  {undo_detail}"
            )
        if step.error is not None:
            lines.append(f"{''.ljust(name_width)}  {'':6}  error: {_shorten(step.error, width + 30)}")
    lines.append("")
    lines += LEGEND
    return lines


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
