"""`make isolation`: issue 10's acceptance run. N ordinary buy-video sagas run twice: once alone (the
baseline), once while every bad case of the issue is attempted beside them; then the verdict.

    python -m saga_harness.isolation [--sagas 100] [--max-slowdown 3]

Each case prints what a user saw (the refusal kubectl printed, or the saga's phase, reason and Event) and
whether it is what the case expects. Then: every ordinary saga of both batches ended Succeeded with its
three effects in the books, every bad saga left no money moved that it should not have, the money total
is what it was, and the ordinary sagas' latency (kubectl apply to the operator's `status.finishedAt`)
with and without the bad cases, as figures and ratios. Exit 0 only if every case matched and the books
balance (and, with --max-slowdown F > 0, the loaded p95 latency is at most F times the baseline's).

The world is a ChaosWorld: a namespace of its own, participants with names of their own, so the run can
share a stack with anything else. The bad cases (docs/operations.md, "Sagas the operator will not run"):

* edits of a running saga: a step renamed, removed, added; spec.payload changed (kubectl apply);
* forged statuses: by a user allowed to write sagas/status (the harness's identity) - phase Succeeded
  mid-run, steps removed - and by one who is not (`kubectl --as=jane`, with RBAC to patch it);
* a saga from a namespace a Participant does not allow;
* payloads of 1 MiB, 300 KiB and 100 levels;
* a step result over 16 KiB (the participant's cap), results over 256 KiB per saga (the operator's), a
  command the broker refuses for its size (a topic whose max.message.bytes is small);
* a dependsOn cycle, and a Rejected saga deleted; a Failed saga with an effect outstanding deleted;
* a second operator started on the HTTP port of the running one.

StatusTooLarge (etcd's `request is too large`) cannot be provoked here: with the caps above a Saga
stays far below etcd's default 1.5 MiB request limit (docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from saga_protocol import command_topic
from saga_testenv import TopicSpec, run_sync
from saga_testenv.stack import Stack, StackEndpoints

from . import kafka_access
from .chaos.world import ChaosWorld
from .manifests import API_VERSION, buy_video_saga
from .world import REPO, TERMINAL

#: The broker refuses a record batch over this many bytes on the narrow participant's command topic.
NARROW_MAX_MESSAGE_BYTES = 4096
PRICE = 10


@dataclass
class Case:
    name: str
    expected: str
    saw: str = "(not attempted)"
    ok: bool = False


@dataclass
class Batch:
    label: str
    #: name -> seconds from the kubectl apply that created it to its status.finishedAt
    latency: dict[str, float] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    makespan: float = 0.0
    #: loaded batch: (bad cases began, bad cases ended, last ordinary saga applied), seconds into the batch
    overlap: tuple[float, float, float] | None = None

    def quantile(self, q: float) -> float:
        values = sorted(self.latency.values())
        if not values:
            return 0.0
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latency.values()) if self.latency else 0.0


@dataclass
class IsolationReport:
    sagas: int
    cases: list[Case]
    baseline: Batch
    loaded: Batch
    money_before: int
    money_after: int
    problems: list[str]
    max_slowdown: float

    @property
    def ratios(self) -> dict[str, float]:
        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else float("inf")

        return {
            "median": ratio(self.loaded.median, self.baseline.median),
            "p95": ratio(self.loaded.quantile(0.95), self.baseline.quantile(0.95)),
            "max": ratio(self.loaded.quantile(1.0), self.baseline.quantile(1.0)),
            "makespan": ratio(self.loaded.makespan, self.baseline.makespan),
        }

    @property
    def too_slow(self) -> bool:
        return self.max_slowdown > 0 and self.ratios["p95"] > self.max_slowdown

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases) and not self.problems and not self.too_slow


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _seq_is_not(seq: object, status: dict[str, Any]) -> bool:
    return status.get("seq") != seq


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class IsolationRun:
    def __init__(
        self,
        endpoints: StackEndpoints,
        run_dir: Path,
        *,
        sagas: int,
        max_slowdown: float = 3.0,
        interval: float = 0.5,
        log: Callable[[str], None] = print,
    ) -> None:
        self.endpoints = endpoints
        self.sagas = sagas
        self.interval = interval
        self.max_slowdown = max_slowdown
        self.log = log
        self.cw = ChaosWorld(endpoints, run_dir, operator_env={"SAGA_MAX_BACKOFF_SECONDS": "5"})
        self.world = self.cw.world
        self.ns = self.cw.namespace
        self.other_ns = f"{self.ns}-other"
        self.narrow = f"narrow-{self.world.run_id}"
        self.world.operator.env["SAGA_PARTICIPANTS"] += f",{self.narrow}"
        self.cases: list[Case] = []
        self.problems: list[str] = []
        #: bad sagas that must end with none of their effects live (name -> why)
        self.undone: dict[str, str] = {}
        #: bad sagas that must end Succeeded with their three effects live (the victims of edits and forgeries)
        self.victims: list[str] = []
        self._suffix = uuid.uuid4().hex[:4]
        #: batch label -> saga name -> when its kubectl apply began (epoch seconds)
        self._applied: dict[str, dict[str, float]] = {}

    # ---- plumbing ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.endpoints.kubectl(*args, input=input)

    def get(self, name: str) -> dict[str, Any]:
        return self.world.get(name, self.ns)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def name(self, prefix: str) -> str:
        return f"{prefix}-{self._suffix}"

    def payload(self, video: str, **extra: Any) -> dict[str, Any]:
        return {"buyer": "alice", "video": video, "price": PRICE, "agent": "acme-films", **extra}

    def buy(self, name: str, payload: dict[str, Any], **options: Any) -> dict[str, Any]:
        options.setdefault("participants", self.cw.names)
        return buy_video_saga(name, payload, namespace=self.ns, **options)

    def slow(self, name: str) -> dict[str, Any]:
        """A saga whose last step takes 20 s to answer: time to do something to it mid-run, even on a machine so
        loaded that each kubectl call takes seconds."""
        simulate = {"simulate": {self.cw.names["agents"]: {"delaySeconds": 20}}}
        self.victims.append(name)
        return self.buy(name, self.payload(f"v-{name}", **simulate), timeout_seconds=60)

    def wait_for(self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if check(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: still {json.dumps(status)[:300]}")
            time.sleep(0.2)

    def wait_terminal(self, name: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait_for(name, lambda s: s.get("phase") in TERMINAL, timeout)

    def warning(self, name: str, reason: str, timeout: float = 30) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.world.events(name, self.ns):
                if event["reason"] == reason and event["type"] == "Warning":
                    return str(event["message"])
            time.sleep(0.3)
        return None

    @contextlib.contextmanager
    def case(self, name: str, expected: str) -> Iterator[Case]:
        """One case: what it saw and whether it matched. An exception is a mismatch, never the end of the run."""
        case = Case(name, expected)
        self.cases.append(case)
        try:
            yield case
        except Exception as exc:
            case.ok = False
            case.saw = f"{case.saw if case.saw != '(not attempted)' else ''} ERROR {type(exc).__name__}: {exc}"
        self.log(f"  [{'ok' if case.ok else 'MISMATCH'}] {case.name}: {_one_line(case.saw, 200)}")

    def refused(self, case: Case, result: subprocess.CompletedProcess[str], *needles: str) -> None:
        case.saw = _one_line(result.stderr if result.returncode != 0 else f"ACCEPTED: {result.stdout}")
        case.ok = result.returncode != 0 and all(n in result.stderr for n in needles)

    # ---- set-up -----------------------------------------------------------------------------------

    def start(self) -> None:
        # The narrow participant's command topic, made before the world provisions the rest (which skips it).
        narrow_topic = TopicSpec(
            command_topic(self.narrow), 1, configs={"max.message.bytes": str(NARROW_MAX_MESSAGE_BYTES)}
        )
        run_sync(kafka_access.create_topics(self.endpoints, [narrow_topic]))
        self.cw.start()
        self.world.kubectl("create", "namespace", self.other_ns)
        participant = {
            "apiVersion": API_VERSION,
            "kind": "Participant",
            "metadata": {"name": self.narrow},
            "spec": {"actions": [{"name": "post"}], "namespaces": [self.ns]},
        }
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "saga-status-editor", "namespace": self.ns},
            "rules": [{"apiGroups": ["saga.dev"], "resources": ["sagas", "sagas/status"], "verbs": ["get", "patch"]}],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "saga-status-editors", "namespace": self.ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "saga-status-editor"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"}],
        }
        listing = {"apiVersion": "v1", "kind": "List", "items": [participant, role, binding]}
        self.world.kubectl("apply", "-f", "-", input=yaml.safe_dump(listing))
        # The participants policy reads Participants through an informer: wait until it refuses other_ns.
        probe = self.narrow_saga("probe", self.other_ns)
        deadline = time.monotonic() + 30
        while self.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe)).returncode == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the admission policy never refused namespace {self.other_ns}")
            time.sleep(0.5)

    def stop(self) -> None:
        for saga in self.kubectl("get", "sagas", "-n", self.ns, "-o", "name").stdout.split():
            self.kubectl("patch", saga, "-n", self.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        self.cw.stop()
        self.kubectl("delete", "participant", self.narrow, "--ignore-not-found")
        for namespace in (self.ns, self.other_ns):
            self.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")

    def narrow_saga(self, name: str, namespace: str, **payload: Any) -> dict[str, Any]:
        debit = {
            "name": "debit-buyer",
            "participant": self.cw.names["users"],
            "action": "debit",
            "compensation": "refund",
            "timeoutSeconds": 20,
        }
        post = {"name": "post-entry", "participant": self.narrow, "action": "post", "timeoutSeconds": 20}
        return {
            "apiVersion": API_VERSION,
            "kind": "Saga",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"payload": self.payload(f"v-{name}", **payload), "steps": [debit, post]},
        }

    # ---- the ordinary sagas -----------------------------------------------------------------------

    def apply_batch(self, label: str, *, chunk: int = 5) -> None:
        """Apply `sagas` ordinary sagas, `chunk` per kubectl apply, one saga every `interval` seconds on average:
        the same pace alone and loaded, so that their latencies compare, and slow enough that the loaded batch
        is still being applied while the bad cases are attempted."""
        pace = chunk * self.interval
        applied = self._applied.setdefault(label, {})
        for first in range(0, self.sagas, chunk):
            names = [f"{label}-{i:04d}" for i in range(first, min(first + chunk, self.sagas))]
            began = time.monotonic()
            stamp = time.time()
            try:
                self.world.apply_all(self.buy(n, self.payload(f"v-{n}")) for n in names)
            except Exception as exc:  # in the applier thread: say so in the verdict, go on
                self.problems.append(f"kubectl apply of {names[0]}..: {exc}")
                continue
            applied.update(dict.fromkeys(names, stamp))
            time.sleep(max(0.0, pace - (time.monotonic() - began)))

    def finish_batch(self, label: str, batch: Batch, began: float, timeout: float) -> None:
        applied = self._applied[label]
        bodies = self.world.wait_terminal(applied, self.ns, timeout=timeout)
        last = 0.0
        for name, body in bodies.items():
            status = body["status"]
            batch.phases[status["phase"]] += 1
            finished = _time(status["finishedAt"]) if status.get("finishedAt") else time.time()
            last = max(last, finished)
            batch.latency[name] = finished - applied[name]
            steps = [s.get("state") for s in status.get("steps") or []]
            if status["phase"] != "Succeeded" or steps != ["Succeeded"] * 3:
                self.problems.append(f"ordinary saga {name}: {status['phase']} {status.get('reason', '')} {steps}")
        batch.makespan = last - began

    # ---- the cases --------------------------------------------------------------------------------

    def run(self) -> IsolationReport:
        money_before = int(self.world.ledger()["moneyTotal"])
        timeout = 120 + self.sagas * 1.5

        self.log(f"baseline: {self.sagas} ordinary sagas alone")
        baseline = Batch("baseline")
        began = time.time()
        self.apply_batch("base")
        self.finish_batch("base", baseline, began, timeout)
        self.log(f"  {dict(baseline.phases)}; latency median {baseline.median:.2f}s p95 {baseline.quantile(0.95):.2f}s")

        self.log(f"loaded: {self.sagas} ordinary sagas while every bad case is attempted")
        loaded = Batch("loaded")
        began = time.time()
        applier = threading.Thread(target=self.apply_batch, args=("load",), daemon=True)
        applier.start()
        cases_began = time.time() - began
        self.bad_cases()
        cases_ended = time.time() - began
        applier.join()
        applied_until = max(self._applied["load"].values(), default=began) - began
        self.log(
            f"  the bad cases ran from t={cases_began:.1f}s to t={cases_ended:.1f}s of the loaded batch; "
            f"its ordinary sagas were applied from t=0 to t={applied_until:.1f}s"
        )
        loaded.overlap = (cases_began, cases_ended, applied_until)
        self.finish_batch("load", loaded, began, timeout)
        self.log(f"  {dict(loaded.phases)}; latency median {loaded.median:.2f}s p95 {loaded.quantile(0.95):.2f}s")

        money_after = int(self.world.ledger()["moneyTotal"])
        self.audit_books()
        if money_after != money_before:
            self.problems.append(f"money total {money_before} before, {money_after} after")
        return IsolationReport(
            self.sagas, self.cases, baseline, loaded, money_before, money_after, self.problems, self.max_slowdown
        )

    def bad_cases(self) -> None:
        names = self.cw.names
        second_operator = self.start_second_operator()
        # Sagas that run (or are refused) in the background while the edits below are made.
        victims = [self.slow(self.name(n)) for n in ("edit-steps", "edit-payload", "forge-phase", "forge-steps")]
        victims.append(self.slow(self.name("forge-jane")))
        rename, payload_edit, forged_phase, forged_steps, jane = (v["metadata"]["name"] for v in victims)
        big_result = self.world.apply(
            self.buy(
                self.name("big-result"),
                self.payload("v-big-result", simulate={names["agents"]: {"resultBytes": 17_000}}),
            )
        )
        many = self.name("big-results")
        users = names["users"]
        steps = [
            {
                "name": f"debit-{i:02d}",
                "participant": users,
                "action": "debit",
                "compensation": "refund",
                "timeoutSeconds": 30,
                **({"dependsOn": []} if i else {}),
            }
            for i in range(17)
        ]
        self.world.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "Saga",
                "metadata": {"name": many, "namespace": self.ns},
                "spec": {
                    "payload": self.payload("v-big-results", price=1, simulate={users: {"resultBytes": 16_000}}),
                    "steps": steps,
                },
            }
        )
        big_command = self.name("big-command")
        self.world.apply(self.narrow_saga(big_command, self.ns, note="n" * 6000))
        stranger = self.world.apply(
            self.buy(self.name("stranger"), self.payload("v-stranger"), participants={**names, "agents": "nobody"})
        )
        stuck_manifest = self.buy(
            self.name("failed"),
            {
                "buyer": "dave",  # 0 cents: the debit is refused, so the recorded purchase is compensated ...
                "video": "v-failed",
                "price": PRICE,
                "agent": "acme-films",
                # ... and that compensation fails twice: Failed, CompensationStuck, the purchase still live
                "simulate": {names["videos"]: {"errorAttempts": 2, "kinds": ["compensation"]}},
            },
            retry={"limit": 1, "backoffSeconds": 1, "maxBackoffSeconds": 1},
        )
        stuck_manifest["spec"]["compensationAttemptLimit"] = 2
        stuck = self.world.apply(stuck_manifest)

        self.world.apply_all(victims)  # last, and in one call: they are all mid-run when the edits come
        for victim in self.victims:
            try:
                self.wait_for(victim, lambda s: s.get("currentStep") == "credit-agent" or s.get("phase") in TERMINAL)
            except TimeoutError as exc:
                self.problems.append(f"victim {victim} never reached its last step: {exc}")
            if self.status(victim).get("phase") in TERMINAL:
                self.problems.append(f"victim {victim} had finished before it was edited or forged: too slow a machine")
        self.forgeries(forged_phase, forged_steps, jane)
        self.edits(rename, payload_edit)
        self.refused_at_apply()
        self.port_in_use(second_operator)
        self.size_outcomes(big_result, many, big_command)
        self.deletions(stranger, stuck)
        for victim in self.victims:
            with self.case(f"{victim} (a victim above) ends as if untouched", "Succeeded, 3/3 steps") as c:
                status = self.wait_terminal(victim)
                states = [s["state"] for s in status.get("steps") or []]
                c.saw = f"phase {status.get('phase')}, steps {states}"
                c.ok = status.get("phase") == "Succeeded" and states == ["Succeeded"] * 3
                if victim == payload_edit:
                    uid = self.get(victim)["metadata"]["uid"]
                    ledger = self.world.ledger()
                    moved = [d["cents"] for d in ledger["debits"] if d["saga"] == uid]
                    moved += [cr["cents"] for cr in ledger["credits"] if cr["saga"] == uid]
                    c.saw += f"; debited and credited (cents): {moved}"
                    c.ok = c.ok and moved == [PRICE, PRICE]

    def edits(self, victim: str, payload_victim: str) -> None:
        frozen = "the steps of a saga cannot change once it is created (only spec.abort, from false to true"
        for what, patch, needle in (
            ("rename", [{"op": "replace", "path": "/spec/steps/1/name", "value": "debit-someone"}], "step debit-buyer"),
            ("remove", [{"op": "remove", "path": "/spec/steps/2"}], "step credit-agent was renamed, edited or removed"),
            (
                "add",
                [
                    {
                        "op": "add",
                        "path": "/spec/steps/-",
                        "value": {"name": "x", "participant": self.cw.names["users"], "action": "debit"},
                    }
                ],
                "steps were added",
            ),
        ):
            with self.case(f"{what} a step of running saga {victim}", "refused at kubectl patch: steps frozen") as c:
                result = self.kubectl("patch", "saga", victim, "-n", self.ns, "--type=json", "-p", json.dumps(patch))
                self.refused(c, result, frozen, needle)
        with self.case(
            f"edit spec.payload (price {PRICE} -> 5000) of running {payload_victim} with kubectl apply",
            "refused at kubectl apply: payload frozen",
        ) as c:
            manifest = self.get(payload_victim)
            edited = {
                "apiVersion": API_VERSION,
                "kind": "Saga",
                "metadata": {"name": payload_victim, "namespace": self.ns},
                "spec": {**manifest["spec"], "payload": {**manifest["spec"]["payload"], "price": 5000}},
            }
            result = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(edited))
            self.refused(c, result, "spec.payload: Forbidden: spec.payload cannot change once the saga is created")

    def forgeries(self, phase_victim: str, steps_victim: str, jane_victim: str) -> None:
        for victim, forged, what in (
            (phase_victim, {"phase": "Succeeded", "seq": 999}, "phase Succeeded mid-run"),
            (steps_victim, {"steps": None, "seq": 998}, "steps: null"),
        ):
            with self.case(
                f"forged status ({what}) on {victim} by a user allowed to write sagas/status",
                "accepted by the API, not adopted: Warning StatusTampered, the operator writes its own log back",
            ) as c:
                body = json.dumps({"status": forged})
                result = self.kubectl(
                    "patch", "saga", victim, "-n", self.ns, "--subresource=status", "--type=merge", "-p", body
                )
                message = self.warning(victim, "StatusTampered")
                restored = self.wait_for(victim, functools.partial(_seq_is_not, forged["seq"]), timeout=30)
                c.saw = (
                    f"kubectl: {_one_line(result.stdout or result.stderr)} | Warning StatusTampered: {message} | "
                    f"status back to seq {restored.get('seq')}, phase {restored.get('phase')}"
                )
                c.ok = result.returncode == 0 and message is not None and "not adopted" in message
        with self.case(
            f"forged status on {jane_victim} as jane (RBAC may patch sagas/status, the policy says no)",
            "refused at kubectl patch by the status-writers policy",
        ) as c:
            body = json.dumps({"status": {"phase": "Succeeded", "seq": 999}})
            result = self.kubectl(
                "--as=jane", "patch", "saga", jane_victim, "-n", self.ns, "--subresource=status", "--type=merge",
                "-p", body,
            )  # fmt: skip
            self.refused(c, result, "sagas.saga.dev-status-writers", "only saga-operator writes it", "not jane")

    def refused_at_apply(self) -> None:
        with self.case(
            f"a saga in namespace {self.other_ns} naming participant {self.narrow} (allows {self.ns} only)",
            "refused at kubectl apply, naming the step and the participant",
        ) as c:
            manifest = self.narrow_saga(self.name("wrong-team"), self.other_ns)
            result = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
            self.refused(
                c,
                result,
                f"step post-entry: participant {self.narrow} does not take commands from namespace {self.other_ns}",
            )
        deep: Any = 1
        for _ in range(100):
            deep = {"a": deep}
        for label, payload, needle in (
            ("1 MiB", self.payload("v-1mib", note="m" * (1 << 20)), "more than the saga protocol carries (65536)"),
            ("300 KiB", self.payload("v-300k", note="k" * (300 << 10)), "more than the saga protocol carries (65536)"),
            ("100-deep", self.payload("v-deep", deep=deep), "nested deeper than the saga protocol allows (32 levels"),
        ):
            with self.case(f"a {label} payload (kubectl create)", "refused at create, naming the limit") as c:
                manifest = self.buy(self.name(f"payload-{label.split()[0].lower()}"), payload)
                result = self.kubectl("create", "-f", "-", input=json.dumps(manifest))
                self.refused(c, result, needle)
        with self.case(
            "a dependsOn cycle (a -> b -> a), then kubectl delete",
            "refused at apply (so never an undeletable InvalidSpec saga); the delete finds nothing stuck",
        ) as c:
            cyc = self.name("cycle")
            one = {"participant": self.cw.names["users"], "action": "debit", "compensation": "refund"}
            manifest = self.buy(cyc, self.payload("v-cycle"))
            manifest["spec"]["steps"] = [
                {**one, "name": "a", "dependsOn": ["b"]},
                {**one, "name": "b", "dependsOn": ["a"]},
            ]
            result = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
            self.refused(c, result, "each dependsOn entry must name another step of this saga, listed before it")
            gone = self.kubectl("delete", "saga", cyc, "-n", self.ns, "--timeout=10s")
            c.saw += f" | kubectl delete: {_one_line(gone.stderr or gone.stdout)}"
            c.ok = c.ok and "NotFound" in gone.stderr

    def start_second_operator(self) -> subprocess.Popen[str]:
        """A second operator on the running one's HTTP port, started now and read at the end of the cases
        (it takes a few seconds to import and fail). Its own namespace and group: it must harm nothing."""
        operator = self.world.operator
        env = {
            **operator.env,
            "SAGA_NAMESPACE": self.other_ns,
            "SAGA_CONSUMER_GROUP": f"{self.world.consumer_group}-port-probe",
        }
        process = subprocess.Popen(operator.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return process

    def port_in_use(self, process: subprocess.Popen[str]) -> None:
        operator = self.world.operator
        with self.case(
            f"a second operator started on the running one's HTTP port {operator.http_port}",
            "exit 1 at once, 'is already in use'; the running operator stays ready",
        ) as c:
            try:
                _, stderr = process.communicate(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            line = next((ln for ln in stderr.splitlines() if "cannot start" in ln), stderr[-300:])
            ready = operator._get("/readyz") is not None
            c.saw = f"exit {process.returncode}: {_one_line(line)} | running operator ready: {ready}"
            c.ok = process.returncode == 1 and "is already in use" in stderr and ready

    def size_outcomes(self, big_result: str, many: str, big_command: str) -> None:
        for name, what, reason in (
            (big_result, "a step result of 17000 bytes (the participant's cap: 16 KiB)", "ResultTooLarge"),
            (many, "17 parallel steps with ~16 KB results (the operator's cap: 256 KiB per saga)", "ResultsTooLarge"),
            (
                big_command,
                f"a command over its topic's max.message.bytes ({NARROW_MAX_MESSAGE_BYTES})",
                "CommandTooLarge",
            ),
        ):
            with self.case(what, f"step error {reason}; the saga is Compensated; nothing left applied") as c:
                status = self.wait_terminal(name)
                errors = [
                    f"{s['name']}: {s['error']['reason']}"
                    for s in status.get("steps") or []
                    if s.get("error") and s["error"].get("reason") not in ("Compensated",)
                ]
                named = [e for e in errors if e.endswith(reason)]
                messages = [(s.get("error") or {}) for s in status.get("steps") or []]
                first = next((m.get("message", "") for m in messages if m.get("reason") == reason), "")
                c.saw = f"phase {status.get('phase')}, {named or errors}: {_one_line(first, 160)}"
                c.ok = status.get("phase") == "Compensated" and bool(named)
                self.undone[name] = what

    def deletions(self, stranger: str, stuck: str) -> None:
        with self.case(
            f"{stranger}: a step names participant 'nobody', then kubectl delete",
            "Rejected/UnknownParticipant with a Warning; deleted at once",
        ) as c:
            status = self.wait_terminal(stranger)
            message = self.warning(stranger, "UnknownParticipant")
            began = time.monotonic()
            deleted = self.kubectl("delete", "saga", stranger, "-n", self.ns, "--timeout=30s")
            took = time.monotonic() - began
            c.saw = (
                f"{status.get('phase')}/{status.get('reason')}: {message} | kubectl delete: "
                f"{_one_line(deleted.stdout or deleted.stderr)} in {took:.1f}s"
            )
            c.ok = (
                (status.get("phase"), status.get("reason")) == ("Rejected", "UnknownParticipant")
                and message is not None
                and deleted.returncode == 0
            )
        with self.case(
            f"{stuck}: Failed (CompensationStuck, the purchase still recorded), then kubectl delete",
            "not dropped: Terminating, Warning DeletionBlocked naming the step; a retry settles it, then it goes",
        ) as c:
            status = self.wait_terminal(stuck)
            self.kubectl("delete", "saga", stuck, "-n", self.ns, "--wait=false")
            message = self.warning(stuck, "DeletionBlocked")
            time.sleep(2)
            kept = self.get(stuck)
            terminating = bool(kept["metadata"].get("deletionTimestamp"))
            self.kubectl("annotate", "saga", stuck, "-n", self.ns, f"saga.dev/retry={int(time.time())}", "--overwrite")
            deadline = time.monotonic() + 60
            while self.kubectl("get", "saga", stuck, "-n", self.ns).returncode == 0 and time.monotonic() < deadline:
                time.sleep(0.3)
            gone = self.kubectl("get", "saga", stuck, "-n", self.ns).returncode != 0
            c.saw = (
                f"{status.get('phase')}/{status.get('reason')} | after delete: still there, Terminating={terminating}; "
                f"Warning DeletionBlocked: {message} | after saga.dev/retry: compensated and gone={gone}"
            )
            c.ok = (
                (status.get("phase"), status.get("reason")) == ("Failed", "CompensationStuck")
                and terminating
                and message is not None
                and "record-purchase" in message
                and gone
            )
            self.undone[stuck] = "compensated after the retry"

    # ---- the books --------------------------------------------------------------------------------

    def audit_books(self) -> None:
        ledger = self.world.ledger()
        # Purchases name their saga `namespace/name`; debits and credits only by uid.
        uid_names: dict[str, str] = {p["saga"]: p["name"].rpartition("/")[2] for p in ledger["purchases"]}
        sagas = json.loads(self.world.kubectl("get", "sagas", "-n", self.ns, "-o", "json"))["items"]
        uid_names.update({s["metadata"]["uid"]: s["metadata"]["name"] for s in sagas})
        by_saga: dict[str, list[str]] = {}
        live = [
            *(("purchase", p["saga"]) for p in ledger["purchases"] if p["state"] == "recorded"),
            *(("debit", d["saga"]) for d in ledger["debits"] if not d["refunded"]),
            *(("credit", c["saga"]) for c in ledger["credits"] if not c["reversed"]),
        ]
        for kind, uid in live:
            by_saga.setdefault(uid_names.get(uid, uid), []).append(kind)
        succeeded = [*self._applied.get("base", {}), *self._applied.get("load", {}), *self.victims]
        for name in succeeded:
            effects = sorted(by_saga.get(name, []))
            if effects != ["credit", "debit", "purchase"]:
                self.problems.append(f"{name} Succeeded but its live effects are {effects}")
        for name, what in self.undone.items():
            if by_saga.get(name):
                self.problems.append(f"{name} ({what}) was undone but left {by_saga[name]} live")
        expected = set(succeeded) | set(self.undone)
        stray = sorted(n for n in by_saga if n not in expected)
        if stray:
            self.problems.append(f"live effects of sagas that should have none: {stray}")


def format_report(report: IsolationReport) -> str:
    lines = [f"== issue 10 acceptance: {report.sagas} ordinary sagas alone, then {report.sagas} beside every bad case"]
    lines.append("")
    lines.append("| case | expected | what the user saw | match |")
    lines.append("| --- | --- | --- | --- |")
    for c in report.cases:
        saw = c.saw.replace("|", "/")
        lines.append(f"| {c.name} | {c.expected} | {saw} | {'yes' if c.ok else 'NO'} |")
    lines.append("")
    for batch in (report.baseline, report.loaded):
        lines.append(
            f"{batch.label:<9} phases {dict(batch.phases)}; latency (apply -> finishedAt) median "
            f"{batch.median:.2f}s, p95 {batch.quantile(0.95):.2f}s, max {batch.quantile(1.0):.2f}s; "
            f"batch makespan {batch.makespan:.1f}s"
        )
    if report.loaded.overlap is not None:
        began, ended, applied = report.loaded.overlap
        lines.append(
            f"the bad cases ran from t={began:.1f}s to t={ended:.1f}s of the loaded batch, whose ordinary sagas were "
            f"applied from t=0 to t={applied:.1f}s"
        )
    r = report.ratios
    lines.append(
        f"loaded/baseline: median x{r['median']:.2f}, p95 x{r['p95']:.2f}, max x{r['max']:.2f}, "
        f"makespan x{r['makespan']:.2f}"
        + (f" (allowed p95: x{report.max_slowdown:.1f})" if report.max_slowdown > 0 else "")
    )
    balanced = report.money_before == report.money_after
    lines.append(
        f"money: {report.money_before} cents before, {report.money_after} after: "
        f"{'balanced' if balanced else 'NOT BALANCED'}"
    )
    for problem in report.problems:
        lines.append(f"PROBLEM: {problem}")
    if report.too_slow:
        lines.append(f"PROBLEM: the loaded p95 latency is x{r['p95']:.2f} the baseline's")
    matched = sum(c.ok for c in report.cases)
    lines.append(
        f"{'PASSED' if report.ok else 'FAILED'}: {matched}/{len(report.cases)} cases as expected, "
        f"{len(report.problems)} problem(s)"
    )
    return "\n".join(lines)


def run_isolation(
    endpoints: StackEndpoints,
    run_dir: Path,
    *,
    sagas: int = 100,
    max_slowdown: float = 3.0,
    interval: float = 0.5,
    log: Callable[[str], None] = print,
) -> IsolationReport:
    run = IsolationRun(endpoints, run_dir, sagas=sagas, max_slowdown=max_slowdown, interval=interval, log=log)
    log(f"starting a world in namespace {run.ns} (participants {', '.join(run.cw.names.values())}, {run.narrow})")
    run.start()
    try:
        return run.run()
    finally:
        run.stop()


@contextlib.contextmanager
def _endpoints(stack_dir: Path) -> Iterator[StackEndpoints]:
    external = StackEndpoints.from_environment()
    if external is not None:
        yield external
        return
    attached = Stack.attach(stack_dir)
    if attached is not None:
        print(f"using the local stack that `make up` started ({stack_dir})", flush=True)
        yield attached
        return
    print("starting a local stack", flush=True)
    with tempfile.TemporaryDirectory(prefix="saga-isolation-stack-") as tmp, Stack(Path(tmp)) as stack:
        yield stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga_harness.isolation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=100, help="ordinary sagas per batch (default 100)")
    parser.add_argument(
        "--max-slowdown",
        type=float,
        default=3.0,
        help="fail if the loaded p95 latency exceeds this many times the baseline's (0: only print)",
    )
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between two ordinary sagas' creation (default 0.5)"
    )
    parser.add_argument("--stack-dir", type=Path, default=REPO / ".stack")
    args = parser.parse_args(argv)
    with _endpoints(args.stack_dir.resolve()) as endpoints, tempfile.TemporaryDirectory(prefix="saga-iso-") as tmp:
        report = run_isolation(
            endpoints,
            Path(tmp),
            sagas=args.sagas,
            max_slowdown=args.max_slowdown,
            interval=args.interval,
            log=lambda m: print(m, flush=True),
        )
    print(format_report(report), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
