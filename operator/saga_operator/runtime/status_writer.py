"""When a saga's status is written: ahead of its effects, or behind them, coalesced (SAGA_STATUS_WRITES).

The rule is the pure core's (`saga_operator.domain.durability.write_ahead_cause`); this component keeps
the book-keeping of the statuses written behind:

- strict: every changed status is written before its effects (one write per transition, as before);
- behind: a transition without a write-ahead cause changes the status in memory only, performs its
  effects, and arms a timer; when it fires (at most SAGA_STATUS_COALESCE_MS after the first unwritten
  change) the coordinator writes the whole status in memory, once. A transition with a cause writes the
  whole status in memory first, which cancels the timer. So a saga has at most one coalesced write per
  window, plus its write-ahead ones; `kubectl get` lags what the operator did by at most the window.

Normal Events of transitions written behind (only `Started` today) are held until the write that records
them, and dropped when that write is the saga's end: the end's own Event says what a person needs.

Invariant: a saga is *dirty* from its first unwritten change until a write succeeds, and only then; while
dirty, `last_written` is the seq and digest of the status the store holds from this operator, which is how
a conflict caused by a metadata or spec change (our status still stored) is told from another writer's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from saga_operator.domain.durability import WriteCause, write_ahead_cause
from saga_operator.domain.events import Effect, EmitEvent
from saga_operator.domain.model import TERMINAL_PHASES, Phase, SagaSpec, SagaStatus
from saga_operator.runtime.metrics import Metrics


@dataclass
class _Unwritten:
    seq: int  # of the last status written (what the store holds from us)
    digest: str | None
    timer: asyncio.TimerHandle | None = None
    events: list[EmitEvent] = field(default_factory=list)


class StatusWriter:
    def __init__(self, behind: bool, coalesce_seconds: float, metrics: Metrics, due: Callable[[str], None]) -> None:
        """`due(uid)`: called when a saga's coalescing window ends; the coordinator then writes it (`flush`)."""
        self.behind = behind
        self.coalesce_seconds = coalesce_seconds
        self.metrics = metrics
        self._due = due
        self._unwritten: dict[str, _Unwritten] = {}

    def cause(self, spec: SagaSpec, old: SagaStatus, new: SagaStatus, effects: Sequence[Effect]) -> WriteCause | None:
        """Why `new` is written before `effects`; None: it is kept in memory and written behind."""
        if not self.behind:
            return WriteCause.STRICT
        return write_ahead_cause(spec, old, new, effects)

    def hold(self, uid: str, written: SagaStatus, effects: list[Effect]) -> list[Effect]:
        """The status changed in memory only; `written` is the one it replaced (the last written, if the saga was
        clean). Arms the window's timer. Returns the effects to perform now (the Normal Events wait)."""
        unwritten = self._unwritten.get(uid)
        if unwritten is None:
            unwritten = self._unwritten[uid] = _Unwritten(written.seq, written.digest)
        if unwritten.timer is None:
            loop = asyncio.get_running_loop()
            unwritten.timer = loop.call_later(self.coalesce_seconds, self._fire, uid)
        now: list[Effect] = []
        for effect in effects:
            if isinstance(effect, EmitEvent) and effect.type == "Normal":
                unwritten.events.append(effect)
            else:
                now.append(effect)
        return now

    def _fire(self, uid: str) -> None:
        unwritten = self._unwritten.get(uid)
        if unwritten is not None:
            unwritten.timer = None
            self._due(uid)

    def written(self, uid: str, cause: str, phase: Phase) -> list[EmitEvent]:
        """A status write succeeded: the saga is clean. Returns the held Events to post now (none at the end)."""
        self.metrics.status_writes_by_cause.labels(cause).inc()
        unwritten = self._unwritten.pop(uid, None)
        if unwritten is None:
            return []
        if unwritten.timer is not None:
            unwritten.timer.cancel()
        return [] if phase in TERMINAL_PHASES else unwritten.events

    def dirty(self, uid: str) -> bool:
        return uid in self._unwritten

    def dirty_uids(self) -> list[str]:
        return list(self._unwritten)

    def ours(self, uid: str, stored: SagaStatus | None, current: SagaStatus) -> bool:
        """Whether `stored` is the last status this operator wrote for the saga (so only its metadata or spec
        moved), `current` being the one in memory."""
        if stored is None:
            return False
        unwritten = self._unwritten.get(uid)
        seq, digest = (unwritten.seq, unwritten.digest) if unwritten is not None else (current.seq, current.digest)
        return stored.seq == seq and stored.digest == digest

    def forget(self, uid: str) -> bool:
        """The saga's unwritten changes are gone (deleted, or replaced by another writer's status). True if it
        had any."""
        unwritten = self._unwritten.pop(uid, None)
        if unwritten is None:
            return False
        if unwritten.timer is not None:
            unwritten.timer.cancel()
        return True
