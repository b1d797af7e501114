"""The observers: the sagas' phases and the steps in flight, polled all along (the drivers' aborts and the
malformed replies aimed at live sagas read them), the progress line, and the end of the run: every saga
terminal, then every command and reply consumed."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..topics import group_lag
from ..world import PARTICIPANTS, TERMINAL, WorldError
from .aio import blocking

if TYPE_CHECKING:
    from .storm import Storm


async def poll(storm: Storm) -> None:
    last_log = 0.0
    while True:
        try:
            overview = await blocking(storm.cw.overview)
        except (WorldError, subprocess.TimeoutExpired):
            pass
        else:
            storm.summary = {name: (uid, phase) for name, (uid, phase, _) in overview.items()}
            storm.in_flight = {name: step for name, (_, _, step) in overview.items()}
        if time.monotonic() - last_log > 15:
            last_log = time.monotonic()
            storm.log(progress(storm))
        # Often enough to catch a saga in its slow credit (5 s) for the aborts aimed at it.
        await asyncio.sleep(1.5)


def progress(storm: Storm) -> str:
    phases = Counter(phase or "-" for _, phase in storm.summary.values())
    terminal = sum(phases[p] for p in TERMINAL)
    t = storm.tally
    return (
        f"  t={storm.elapsed():6.1f}s applied {len(t.applied_at)}/{len(storm.plans)}, terminal {terminal} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(phases.items()))}); operator kills {t.operator_kills}, "
        f"participant kills {sum(t.participant_kills.values())}, kafka restarts {t.kafka_restarts}, "
        f"api pauses {t.apiserver_pauses}, duplicates {sum(storm.redeliverer.copies.values())}, "
        f"malformed {sum(1 for i in storm.injector.sent if i.acked)}"
    )


async def finish(storm: Storm) -> None:
    """Wait for every saga to end, then for every command and reply to be consumed."""
    names = {p.name for p in storm.plans}
    deadline = time.monotonic() + storm.config.finish_timeout
    while True:
        storm.summary = await blocking(storm.cw.summary)
        open_ = sorted(n for n in names if storm.summary.get(n, ("", ""))[1] not in TERMINAL)
        if not open_:
            break
        if time.monotonic() > deadline:
            storm.tally.problems.append(f"{len(open_)} sagas not terminal after {storm.config.finish_timeout:.0f}s")
            return
        await asyncio.sleep(2.0)
    storm.log(f"  every saga terminal at t={storm.elapsed():.1f}s; draining the topics")
    groups = [(storm.cw.operator_group, storm.cw.reply_topics)]
    groups += [(storm.cw.participant_group(s), [storm.cw.command_topic(s)]) for s in PARTICIPANTS]
    deadline = time.monotonic() + 180.0
    quiet = 0
    while quiet < 2:
        lags = [await group_lag(storm.kafka, g, t) for g, t in groups]
        quiet = quiet + 1 if not any(lags) else 0
        if time.monotonic() > deadline:
            lag = dict(zip((g for g, _ in groups), lags, strict=True))
            storm.tally.problems.append(f"commands or replies never consumed (after 180 s): lag {lag}")
            return
        await asyncio.sleep(1.0)
