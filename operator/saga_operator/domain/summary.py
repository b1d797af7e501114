"""What `kubectl get sagas` shows at a glance: PROGRESS and DURATION, derived from the log.

Pure: the caller passes the clock. Both are plain strings on the status (printer columns can only show a
field), written with every status write (`transition` and `settle`), never on their own: a saga the operator
does not touch keeps the duration of its latest write.
"""

from __future__ import annotations

from datetime import datetime

from saga_operator.domain.model import SagaStatus, StepState

# Steps whose action took effect (or may have: an abandoned one is compensated all the same) and that the undo
# has reached or will reach. SUCCEEDED still holds its effect; the other three are on their way back.
_DONE = frozenset({StepState.SUCCEEDED, StepState.COMPENSATING, StepState.COMPENSATION_RETRYING, StepState.COMPENSATED})


def progress(status: SagaStatus) -> str | None:
    """`2/3 done` going forward; `2/3 done, 1 undone` once the saga is being undone (of the 2 steps that were
    done, 1 is compensated). None before the saga has step records (Pending, or Rejected before it started)."""
    total = len(status.steps)
    if total == 0:
        return None
    done = sum(record.state in _DONE for record in status.steps)
    text = f"{done}/{total} done"
    if status.undoing:
        undone = sum(record.state == StepState.COMPENSATED for record in status.steps)
        text += f", {undone} undone"
    return text


def duration(status: SagaStatus, now: datetime) -> str | None:
    """From startedAt to finishedAt, or to `now` while the saga runs; None before it started."""
    if status.started_at is None:
        return None
    end = status.finished_at or now
    return human_duration((end - status.started_at).total_seconds())


def human_duration(seconds: float) -> str:
    """A short duration in kubectl's style, two units at most: 0.4s, 12s, 2m5s, 3h12m, 4d2h.

    Tenths below ten seconds: most sagas finish within a second or two, and `0s` would say nothing."""
    seconds = max(0.0, seconds)
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    whole = max(10, int(seconds))  # 9.96 shows as 10s, not 10.0s
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
