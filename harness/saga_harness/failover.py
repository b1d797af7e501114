"""`python -m saga_harness.failover`: how long the sagas of a killed replica wait for a survivor.

Runs the buy-video world with 2-3 operator replicas sharing the sagas (docs/architecture.md, "Several
replicas"). Each round applies sagas whose debit the participant delays (so they are in flight), SIGKILLs
one replica once it has applied steps, and measures, from the kill, the first step of one of *its* sagas
(by shard: `saga_operator_shard_owned` before the kill) applied by a survivor (`finishedAt` in the log). Then
the victim is started again and the next round begins. Finally a rolling restart (SIGTERM, start, ready, the
next one) runs while sagas are in flight, and the longest step (dispatch to applied) is printed beside the
participant's delay. At the end every saga must have Succeeded with its purchase, debit and credit booked
once; the exit status says whether they were.

Figures are printed, never asserted (docs/performance.md, docs/operations.md "Several replicas").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from saga_operator.adapters.shards import Ownership

from .demo import _endpoints
from .manifests import buy_video_saga
from .services import Service
from .world import REPO, SagaWorld

DELAY = 2.0  # the participant's delay of each debit


def _owned(operator: Service) -> set[int]:
    from prometheus_client.parser import text_string_to_metric_families

    text = operator._get("/metrics") or ""
    return {
        int(sample.labels["shard"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "saga_operator_shard_owned"
    }


def _wait(what: str, check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.1)


def _stamp(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


class Failover:
    def __init__(self, world: SagaWorld, partitions: int, per_round: int) -> None:
        self.world = world
        self.partitions = partitions
        self.per_round = per_round
        self.names: list[str] = []
        self.round = 0

    def all_own_shards(self) -> bool:
        owned = [_owned(op) for op in self.world.operators]
        return all(owned) and sorted(s for o in owned for s in o) == list(range(self.partitions))

    def apply_round(self) -> list[str]:
        self.round += 1
        manifests = [
            buy_video_saga(
                f"failover-{self.round}-{i}",
                {
                    "buyer": "alice",
                    "video": f"v-f{self.round}-{i}",
                    "price": 1,
                    "agent": "bob-agency",
                    "simulate": {"users": {"delaySeconds": DELAY, "delayAttempts": 1}},
                },
                timeout_seconds=60,
            )
            for i in range(self.per_round)
        ]
        names = [str(m["metadata"]["name"]) for m in manifests]
        self.world.apply_all(manifests)
        self.names += names
        return names

    def sagas(self, names: list[str]) -> list[dict[str, Any]]:
        wanted = set(names)
        import json

        items = json.loads(self.world.kubectl("get", "sagas", "-n", "default", "-o", "json"))["items"]
        return [i for i in items if i["metadata"]["name"] in wanted]

    def kill_round(self, victim: Service) -> float:
        """Seconds from the SIGKILL of `victim` to the first step of one of its sagas applied after it."""
        names = self.apply_round()
        applied = victim.metric("saga_operator_step_outcomes_total")
        _wait("the victim applies steps", lambda: victim.metric("saga_operator_step_outcomes_total") > applied)
        shards = _owned(victim)
        killed_at = time.time()
        victim.kill()
        ownership = Ownership(self.partitions, frozenset(shards))
        theirs = [b["metadata"]["name"] for b in self.sagas(names) if ownership.owns(b["metadata"]["uid"])]
        print(f"  killed {victim.name} owning shards {sorted(shards)}, sagas {theirs}", flush=True)
        first: float | None = None
        deadline = time.monotonic() + 120
        while first is None and time.monotonic() < deadline:
            for body in self.sagas(names):
                if not ownership.owns(body["metadata"]["uid"]):
                    continue
                for step in (body.get("status") or {}).get("steps", []):
                    done = _stamp(step.get("finishedAt"))
                    if done is not None and done > killed_at and (first is None or done < first):
                        first = done
            time.sleep(0.2)
        if first is None:
            for operator in self.world.operators:
                print(f"--- {operator.name} shards {_owned(operator)}\n{operator.log_tail(60)}", file=sys.stderr)
            raise RuntimeError(f"no saga of the killed replica moved within 120 s: {self.world.phases()}")
        self.world.wait_terminal(names, timeout=180)
        victim.start()
        _wait("every replica owns shards again", self.all_own_shards)
        return first - killed_at

    def rolling_restart(self) -> float:
        """The longest step (dispatch to applied) of sagas in flight while every replica is restarted in turn."""
        began = time.time()
        names = self.apply_round()
        for operator in self.world.operators:
            names += self.apply_round()
            operator.stop()  # SIGTERM: the replica leaves the group, its shards move at once
            operator.start()
        self.world.wait_terminal(names, timeout=300)
        longest = 0.0
        for body in self.sagas(names):
            for step in body["status"]["steps"]:
                sent, done = _stamp(step.get("dispatchedAt")), _stamp(step.get("finishedAt"))
                if sent is not None and done is not None and done > began:
                    longest = max(longest, done - sent)
        return longest

    def audit(self) -> list[str]:
        problems = []
        ledger = self.world.ledger()
        for body in self.sagas(self.names):
            name, uid, phase = body["metadata"]["name"], body["metadata"]["uid"], body["status"]["phase"]
            if phase != "Succeeded":
                problems.append(f"{name}: {phase}")
            for book in ("purchases", "debits", "credits"):
                booked = [row for row in ledger[book] if row["saga"] == uid]
                if len(booked) != 1:
                    problems.append(f"{name}: {len(booked)} {book}")
        if not ledger["consistent"]:
            problems.append("the books disagree")
        return problems


def run(
    replicas: int, kills: int, per_round: int, partitions: int, stack_dir: Path, restart: bool, keep: Path | None
) -> int:
    with _endpoints(stack_dir) as endpoints, tempfile.TemporaryDirectory(prefix="saga-failover-") as tmp:
        run_dir = keep.absolute() if keep is not None else Path(tmp)
        world = SagaWorld(endpoints, run_dir, operator_env={"SAGA_TOPIC_PARTITIONS": str(partitions)})
        with world:
            for _ in range(replicas - 1):
                world.add_operator().start()
            failover = Failover(world, partitions, per_round)
            _wait("every replica owns shards", failover.all_own_shards)
            session = world.operator.env.get("SAGA_GROUP_SESSION_TIMEOUT_SECONDS", "10 (default)")
            print(f"{replicas} replicas, {partitions} shards, group session timeout {session} s", flush=True)
            times = []
            for kill in range(kills):
                victim = world.operators[kill % replicas]
                seconds = failover.kill_round(victim)
                times.append(seconds)
                print(f"kill {kill + 1:>2} ({victim.name}): first step of its sagas applied {seconds:.1f} s later")
            if times:
                print(
                    f"failover over {len(times)} kills: median {statistics.median(times):.1f} s, "
                    f"worst {max(times):.1f} s, best {min(times):.1f} s"
                )
            if restart:
                longest = failover.rolling_restart()
                print(
                    f"rolling restart of {replicas} replicas: longest step {longest:.1f} s "
                    f"(participant delay {DELAY:.0f} s)"
                )
            problems = failover.audit()
            print(f"audit: {len(failover.names)} sagas, {len(problems)} problems")
            for problem in problems[:20]:
                print(f"  {problem}")
            return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saga_harness.failover", description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=2, choices=(2, 3))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--sagas", type=int, default=12, help="sagas applied per round")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the reply topics: the shards")
    parser.add_argument("--no-rolling-restart", action="store_true")
    parser.add_argument("--stack-dir", type=Path, default=REPO / ".stack")
    parser.add_argument("--keep", type=Path, default=None, help="keep the logs and databases here")
    args = parser.parse_args(argv)
    return run(
        args.replicas,
        args.kills,
        args.sagas,
        args.partitions,
        args.stack_dir.resolve(),
        not args.no_rolling_restart,
        args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
