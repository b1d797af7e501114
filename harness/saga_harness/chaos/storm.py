"""The storm: the sagas applied while every fault is injected, then everything brought back up and drained.

`Storm` holds what the run's concurrent parts share (the plan, the world, the tally, the latest view of
the sagas) and runs them side by side:

* `drivers`: apply the sagas at the configured rate, abort some of them;
* `schedule`: the faults (operator, participants, the broker, the API server, malformed messages);
* `redelivery`: copies of real messages;
* `observers`: the sagas' phases as they move, and the end (every saga terminal, every topic drained).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import kafka_access
from ..faults import StackFaults
from ..world import PARTICIPANTS
from . import drivers, observers, schedule
from .aio import blocking, sleep_or_stop
from .malformed import Injector
from .plan import ChaosConfig, SagaPlan
from .redelivery import Redeliverer
from .world import ChaosWorld

Log = Callable[[str], None]


@dataclass
class Tally:
    """What the fault injector did."""

    operator_kills: int = 0
    rolling_restarts: int = 0
    participant_kills: Counter[str] = field(default_factory=Counter)
    kafka_restarts: int = 0
    kafka_down_seconds: float = 0.0
    apiserver_pauses: int = 0
    apiserver_paused_seconds: float = 0.0
    aborts_sent: int = 0
    #: Aborts not sent: the saga ended before the poller saw the step aimed at in flight, or the faults
    #: ended first.
    aborts_missed: int = 0
    applied_at: dict[str, float] = field(default_factory=dict)
    #: Things that went wrong along the way but are not violations (a kubectl call retried).
    notes: list[str] = field(default_factory=list)
    #: Things that are violations of their own (sagas that never finished, topics never drained).
    problems: list[str] = field(default_factory=list)


class Storm:
    """One run's faults and load, from the first apply to the last message consumed (`run`)."""

    def __init__(
        self,
        config: ChaosConfig,
        cw: ChaosWorld,
        plans: list[SagaPlan],
        faults: StackFaults | None,
        log: Log,
    ) -> None:
        self.config = config
        self.cw = cw
        self.plans = plans
        self.faults = faults
        self.log = log
        self.tally = Tally()
        #: the storm's own Kafka clients (injector, redeliverer, lag observers): the admin
        self.kafka = kafka_access.client_options(cw.endpoints)
        self.stop = asyncio.Event()
        # A SIGKILL and the rolling restart never hit the replicas at the same moment.
        self.operators_lock = asyncio.Lock()
        self.summary: dict[str, tuple[str, str]] = {}
        self.in_flight: dict[str, str] = {}
        self.redeliverer = Redeliverer(
            self.kafka,
            {**dict.fromkeys(cw.reply_topics, "replies"), **{cw.command_topic(s): "commands" for s in PARTICIPANTS}},
            random.Random(f"{config.seed}/redeliver"),
        )
        self.injector = Injector(self.kafka)
        self.started = time.monotonic()

    def rng(self, what: str) -> random.Random:
        """The random numbers of one part of the schedule, from the seed (each part draws its own)."""
        return random.Random(f"{self.config.seed}/{what}")

    @property
    def window(self) -> float:
        """Seconds of faults: the submissions and a tail."""
        return self.config.sagas / self.config.rate + self.config.tail

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def run(self) -> None:
        poller = asyncio.create_task(observers.poll(self), name="poll")
        redeliver = asyncio.create_task(self.redeliverer.run(self.stop, self.config.duplicate_every), name="dup")
        dependencies = asyncio.create_task(schedule.break_dependencies(self), name="dependencies")
        faults = [
            asyncio.create_task(schedule.kill_operator(self), name="operator"),
            asyncio.create_task(schedule.rolling_restart(self), name="rolling-restart"),
            asyncio.create_task(schedule.kill_participants(self), name="participants"),
            dependencies,
            asyncio.create_task(schedule.inject_malformed(self), name="malformed"),
        ]
        aborts = asyncio.create_task(drivers.abort_some(self), name="aborts")
        try:
            await drivers.submit(self)
            self.log(f"  all {len(self.plans)} sagas applied after {self.elapsed():.1f}s; faults go on for a while")
            await sleep_or_stop(self.stop, self.started + self.window - time.monotonic())
            if not dependencies.done():
                # A broker restart takes a while on a small machine: the other faults go on through it,
                # and for a little while after, rather than stopping while Kafka is still down.
                await dependencies
                await asyncio.sleep(min(self.config.tail, 10.0))
            self.stop.set()
            # Each fault finishes what it started (a service being restarted comes back up).
            for task in [*faults, redeliver]:
                await task
            await aborts
            self.log(f"  faults stopped at t={self.elapsed():.1f}s; making sure everything is up")
            await self.everything_up()
            await observers.finish(self)
        finally:
            self.stop.set()
            poller.cancel()
            for task in [*faults, redeliver, aborts, poller]:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def everything_up(self) -> None:
        if self.faults is not None:
            self.faults.resume_apiserver()
            if not self.faults.kafka_running():
                self.faults.start_kafka(wait=False)
                await blocking(self.faults.wait_kafka, 180.0)
        for service in self.cw.services:
            if not service.running():
                service.start(wait=False)
        for service in self.cw.services:
            await blocking(service.wait_ready, 300.0)
