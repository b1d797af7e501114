"""The plan of a chaos run: the accounts to seed and the mix of sagas, all from the seed.

`plan(config, names)` draws N buy-video sagas: business failures (a buyer without money, a closed agent),
participants slower than the step timeout, transient participant errors, aborts at a random moment or
while the last step is in flight. `ChaosConfig` also holds the knobs of the fault schedule
(`schedule.py`) and of the drivers (`drivers.py`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from ..manifests import BUY_VIDEO_STEPS
from ..world import PARTICIPANTS

#: (step, service, action, compensation): the buy-video saga, in order.
STEPS: Final = BUY_VIDEO_STEPS


@dataclass(frozen=True)
class ChaosConfig:
    sagas: int = 300
    seed: int = 0
    #: Sagas applied per second (in `kubectl apply` batches of `batch`).
    rate: float = 4.0
    batch: int = 8
    step_timeout: int = 6
    retry_limit: int = 4
    #: The operator runs for a random while in this range (seconds) between two SIGKILLs.
    operator_kill_every: tuple[float, float] = (3.0, 8.0)
    #: Operator replicas sharing the sagas (docs/architecture.md, "Several replicas"). With more than one, each
    #: SIGKILL hits a replica drawn from the seed, and every replica is restarted in turn once, mid-run.
    replicas: int = 1
    restart_kafka: bool = True
    kill_participants: bool = True
    #: How long the API server stays frozen (0: not at all).
    apiserver_pause: float = 8.0
    #: One real command or reply copied back onto its topic every this many seconds.
    duplicate_every: float = 0.4
    #: Each kind of malformed reply and command is injected this many times.
    malformed_rounds: int = 1
    #: Faults go on for this long after the last saga was applied.
    tail: float = 20.0
    #: After the faults, how long every saga has to reach a terminal phase.
    finish_timeout: float = 900.0
    # The saga mix.
    p_poor: float = 0.08
    p_closed_agent: float = 0.07
    p_delay: float = 0.05
    p_flaky: float = 0.07
    p_abort: float = 0.10
    p_late_abort: float = 0.04

    def short(self) -> ChaosConfig:
        """The short form that runs inside `make test`."""
        return ChaosConfig(**{**asdict(self), "sagas": 40, "rate": 3.0, "tail": 15.0})


@dataclass(frozen=True)
class Accounts:
    users: dict[str, int]
    agents: dict[str, tuple[str, int]]


@dataclass
class SagaPlan:
    name: str
    buyer: str
    video: str
    price: int
    agent: str
    #: participant name -> simulate knob (saga_participants.testing.FaultInjection reads it)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Seconds after the saga was applied at which `spec.abort` is set (None: never).
    abort_after: float | None = None
    #: Set `spec.abort` as soon as this step is seen in flight (None: not so).
    abort_at_step: str | None = None
    #: Why the saga cannot succeed, whatever the faults (None: it may).
    cannot_succeed: str | None = None
    tags: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"buyer": self.buyer, "video": self.video, "price": self.price, "agent": self.agent}
        if self.knobs:
            body["simulate"] = self.knobs
        return body


def plan(config: ChaosConfig, names: Mapping[str, str]) -> tuple[Accounts, list[SagaPlan]]:
    """The accounts to seed and the sagas to run, all from the seed. `names`: service -> participant."""
    rng = random.Random(f"{config.seed}/plan")
    users = {f"buyer-{i:02d}": 0 if i < 4 else rng.choice((2_000, 5_000, 10_000, 40_000)) for i in range(24)}
    agents = {f"agent-{i}": ("open", 0) for i in range(4)}
    agents["agent-closed"] = ("closed", 0)
    poor = [u for u, balance in users.items() if balance == 0]
    rich = [u for u, balance in users.items() if balance > 0]
    open_agents = [a for a, (status, _) in agents.items() if status == "open"]
    plans = []
    for index in range(config.sagas):
        p = SagaPlan(
            name=f"chaos-{index:04d}",
            buyer=rng.choice(rich),
            video=f"video-{rng.randrange(60)}",
            price=rng.randrange(100, 2_500),
            agent=rng.choice(open_agents),
        )
        if rng.random() < config.p_poor:
            p.buyer = rng.choice(poor)
            p.cannot_succeed = "the buyer has no money (InsufficientFunds)"
            p.tags.append("poor-buyer")
        if rng.random() < config.p_closed_agent:
            p.agent = "agent-closed"
            p.cannot_succeed = p.cannot_succeed or "the agent is closed (AgentClosed)"
            p.tags.append("closed-agent")
        if rng.random() < config.p_delay:
            service = rng.choice(PARTICIPANTS)
            knob: dict[str, Any] = {
                "delaySeconds": config.step_timeout + 1.0,
                "delayAttempts": rng.choice((1, 1, 2)),
            }
            if rng.random() < 0.5:
                knob["kinds"] = ["action", "compensation"]
            p.knobs[names[service]] = knob
            p.tags.append(f"slow-{service}")
        if rng.random() < config.p_flaky:
            service = rng.choice(PARTICIPANTS)
            knob = p.knobs.setdefault(names[service], {})
            knob["errorAttempts"] = rng.choice((1, 2))
            if rng.random() < 0.5:
                knob["kinds"] = ["action", "compensation"]
            p.tags.append(f"flaky-{service}")
        if rng.random() < config.p_abort:
            p.abort_after = round(rng.uniform(0.0, 3.0 * config.step_timeout), 2)
            p.tags.append("abort")
            service = rng.choice(PARTICIPANTS)
            if rng.random() < 0.4 and names[service] not in p.knobs:
                # ... and the undo meets trouble: compensations are retried until they succeed, and the
                # success of an earlier attempt, arriving late, is the compensation's success.
                if rng.random() < 0.5:
                    p.knobs[names[service]] = {"errorAttempts": 1, "kinds": ["compensation"]}
                    p.tags.append(f"flaky-compensation-{service}")
                else:
                    slow = {"delaySeconds": config.step_timeout + 2.5, "delayAttempts": 1, "kinds": ["compensation"]}
                    p.knobs[names[service]] = slow
                    p.tags.append(f"slow-compensation-{service}")
        elif rng.random() < config.p_late_abort:
            # The credit takes a while and the abort comes while it is in flight: its compensation goes
            # first and the others wait for it (reverse order while the last step's outcome is unknown).
            p.knobs[names["agents"]] = {"delaySeconds": config.step_timeout - 1.0, "delayAttempts": 1}
            p.abort_at_step = "credit-agent"
            p.tags.append("abort-during-credit")
        plans.append(p)
    return Accounts(users, agents), plans
