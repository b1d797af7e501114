"""The drivers: the sagas applied at the configured rate (`kubectl apply`, in batches), and the aborts
(`kubectl patch`), at a time after the apply or as soon as the step aimed at is seen in flight."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import TYPE_CHECKING

from ..world import TERMINAL, WorldError
from .aio import blocking

if TYPE_CHECKING:
    from .storm import Storm


async def submit(storm: Storm) -> None:
    manifests = {
        p.name: storm.cw.saga(
            p.name,
            p.payload(),
            timeout_seconds=storm.config.step_timeout,
            retry={"limit": storm.config.retry_limit, "backoffSeconds": 1, "maxBackoffSeconds": 4},
        )
        for p in storm.plans
    }
    names = list(manifests)
    size = max(1, storm.config.batch)
    for start in range(0, len(names), size):
        due = storm.started + start / storm.config.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        batch = names[start : start + size]
        while True:
            try:
                await blocking(storm.cw.apply, [manifests[n] for n in batch])
                break
            except (WorldError, subprocess.TimeoutExpired) as exc:
                storm.tally.notes.append(f"kubectl apply retried: {str(exc).splitlines()[0][:120]}")
                await asyncio.sleep(1.0)
        now = time.monotonic()
        for name in batch:
            storm.tally.applied_at[name] = now


async def abort_some(storm: Storm) -> None:
    pending = [p for p in storm.plans if p.abort_after is not None or p.abort_at_step is not None]
    while pending:
        if storm.stop.is_set():
            storm.tally.aborts_missed += len(pending)  # the faults ended before their moment came
            return
        due = []
        for p in [p for p in pending if p.name in storm.tally.applied_at]:
            if p.abort_at_step is not None:
                if storm.summary.get(p.name, ("", ""))[1] in TERMINAL:
                    pending.remove(p)  # it ended before the step was seen in flight
                    storm.tally.aborts_missed += 1
                elif storm.in_flight.get(p.name) == p.abort_at_step:
                    due.append(p)
            elif time.monotonic() >= storm.tally.applied_at[p.name] + (p.abort_after or 0):
                due.append(p)
        for p in due:
            pending.remove(p)
            try:
                await blocking(storm.cw.abort, p.name)
                storm.tally.aborts_sent += 1
            except (WorldError, subprocess.TimeoutExpired) as exc:
                storm.tally.notes.append(f"abort of {p.name} not sent: {str(exc).splitlines()[0][:120]}")
        await asyncio.sleep(0.2)
