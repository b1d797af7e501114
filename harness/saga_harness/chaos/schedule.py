"""The fault schedule, drawn from the seed: the operator SIGKILLed every few seconds, each participant once,
the Kafka broker once and the API server once (never both at a time), the malformed messages at random
moments of the run."""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import TYPE_CHECKING

from ..services import Service
from ..world import PARTICIPANTS
from .aio import blocking, sleep_or_stop
from .malformed import COMMAND_KINDS, NEEDS_SAGA, REPLY_KINDS, make_malformed_command, make_malformed_reply

if TYPE_CHECKING:
    from .storm import Storm


async def restart(service: Service, down: float) -> None:
    """SIGKILL and start again. The spawn happens here, on the main thread (see faults.py)."""
    service.kill()
    await asyncio.sleep(down)
    service.start(wait=False)
    await blocking(service.wait_ready, 300.0)


async def kill_operator(storm: Storm) -> None:
    """SIGKILL an operator replica (one drawn from the seed), start it again, and on."""
    rng = storm.rng("operator")
    low, high = storm.config.operator_kill_every
    while not await sleep_or_stop(storm.stop, rng.uniform(low, high)):
        async with storm.operators_lock:
            operators = storm.cw.operators
            # (one replica: no draw, so a seed's schedule is the one it was before replicas)
            victim = rng.choice(operators) if len(operators) > 1 else operators[0]
            await restart(victim, rng.uniform(0.0, 1.0))
        storm.tally.operator_kills += 1


async def rolling_restart(storm: Storm) -> None:
    """With several replicas: once, mid-run, each replica stopped cleanly (SIGTERM) and started again, waiting
    until it is ready before the next, as a Deployment's rollout does."""
    operators = storm.cw.operators
    if len(operators) < 2:
        return
    rng = storm.rng("rolling")
    if await sleep_or_stop(storm.stop, storm.started + rng.uniform(0.4, 0.6) * storm.window - time.monotonic()):
        return
    for operator in operators:
        async with storm.operators_lock:
            await blocking(operator.stop)
            operator.start(wait=False)
            await blocking(operator.wait_ready, 300.0)
    storm.tally.rolling_restarts += 1


async def kill_participants(storm: Storm) -> None:
    if not storm.config.kill_participants:
        return
    rng = storm.rng("participants")
    times = sorted((rng.uniform(0.1, 0.9) * storm.window, s) for s in PARTICIPANTS)
    for when, service in times:
        if await sleep_or_stop(storm.stop, storm.started + when - time.monotonic()):
            return
        await restart(storm.cw.participants[service], rng.uniform(0.5, 2.0))
        storm.tally.participant_kills[service] += 1


async def break_dependencies(storm: Storm) -> None:
    """The Kafka broker once, then the API server once, never both at the same time."""
    if storm.faults is None:
        return
    rng = storm.rng("dependencies")
    submit = storm.config.sagas / storm.config.rate
    if storm.config.restart_kafka:
        if await sleep_or_stop(storm.stop, storm.started + rng.uniform(0.3, 0.45) * submit - time.monotonic()):
            return
        began = time.monotonic()
        storm.faults.stop_kafka(kill=True)
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        storm.faults.start_kafka(wait=False)
        await blocking(storm.faults.wait_kafka, 180.0)
        storm.tally.kafka_restarts += 1
        storm.tally.kafka_down_seconds = time.monotonic() - began
    if storm.config.apiserver_pause > 0:
        if await sleep_or_stop(storm.stop, storm.started + rng.uniform(0.65, 0.8) * submit - time.monotonic()):
            return
        began = time.monotonic()
        storm.faults.pause_apiserver()
        try:
            await asyncio.sleep(storm.config.apiserver_pause)
        finally:
            storm.faults.resume_apiserver()
        storm.tally.apiserver_pauses += 1
        storm.tally.apiserver_paused_seconds = time.monotonic() - began


async def inject_malformed(storm: Storm) -> None:
    rng = storm.rng("malformed")
    await storm.injector.start()
    try:
        jobs: list[tuple[float, int, str, str]] = []
        order = 0
        for _ in range(storm.config.malformed_rounds):
            for kind in REPLY_KINDS:
                jobs.append((rng.uniform(0.1, 0.9) * storm.window, order, "reply", kind))
                order += 1
            for service in PARTICIPANTS:
                for kind in COMMAND_KINDS:
                    jobs.append((rng.uniform(0.1, 0.9) * storm.window, order, service, kind))
                    order += 1
        heapq.heapify(jobs)
        while jobs:
            when, order, target, kind = heapq.heappop(jobs)
            if await sleep_or_stop(storm.stop, storm.started + when - time.monotonic()):
                return
            if target == "reply":
                saga = None
                if kind in NEEDS_SAGA:
                    started = sorted(uid for uid, phase in storm.summary.values() if phase not in ("", "Pending"))
                    if not started:
                        heapq.heappush(jobs, (when + 2.0, order, target, kind))  # no saga started yet
                        continue
                    saga = rng.choice(started)
                made = make_malformed_reply(kind, saga, storm.cw.names["users"])
                await storm.injector.send(storm.cw.reply_topic, kind, made, saga)
            else:
                made = make_malformed_command(kind, storm.cw.names[target], storm.cw.trusted_reply_topic(target))
                await storm.injector.send(storm.cw.command_topic(target), kind, made)
    finally:
        await storm.injector.stop()
