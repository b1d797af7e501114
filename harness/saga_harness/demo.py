"""`make demo`: the buy-video sagas on the local stack, watched the way a user watches them.

Starts the local stack (or uses the one `make up` started, or the cluster and broker named by
KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS), installs the CRD, runs the operator and the three
participants, applies the examples, prints `kubectl get sagas` whenever it changes, then the ledgers.
Exits 0 only if every saga ended in the phase its `demo.saga.dev/expected-phase` annotation names and
the money balances.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from saga_testenv.stack import Stack, StackEndpoints

from .world import REPO, TERMINAL, SagaWorld

EXPECTED = "demo.saga.dev/expected-phase"


def _say(message: str) -> None:
    print(f"\n== {message}", flush=True)


@contextlib.contextmanager
def _endpoints(stack_dir: Path) -> Iterator[StackEndpoints]:
    external = StackEndpoints.from_environment()
    if external is not None:
        _say(f"using the cluster in KUBECONFIG and the broker at {external.kafka_bootstrap}")
        yield external
        return
    attached = Stack.attach(stack_dir)
    if attached is not None:
        _say(f"using the local stack that `make up` started ({stack_dir})")
        yield attached
        return
    _say("starting the local stack (the first run builds etcd, kube-apiserver and fetches Kafka: minutes)")
    with tempfile.TemporaryDirectory(prefix="saga-demo-stack-") as tmp, Stack(Path(tmp)) as stack:
        yield stack


def load_examples(folder: Path, kind: str = "Saga") -> list[dict[str, Any]]:
    """The objects of `kind` in the folder's YAML files and in its templates/ subfolder (the SagaTemplate
    examples and the Sagas that use them)."""
    manifests = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("templates/*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                doc.setdefault("metadata", {}).setdefault("namespace", "default")
                manifests.append(doc)
    return manifests


def show_inputs(world: SagaWorld, manifests: list[dict[str, Any]]) -> None:
    """For each templated saga: its template and parameters, and the input each step's command carried."""
    for manifest in manifests:
        if "templateRef" not in manifest["spec"]:
            continue
        status = world.get(manifest["metadata"]["name"]).get("status") or {}
        template = status.get("template") or {}
        print(f"{manifest['metadata']['name']}: SagaTemplate {template.get('name')} with {template.get('parameters')}")
        for record in status.get("steps", []):
            if record.get("input") is not None:
                print(f"  step {record['name']}: input {record['input']}")


def watch(world: SagaWorld, names: list[str], timeout: float) -> None:
    """Print `kubectl get sagas` each time it changes, until every demo saga has finished."""
    last = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phases = world.phases()  # read before the table, so the last table shows the end
        table = world.kubectl("get", "sagas", "-n", "default", *names)
        if table != last:
            print(f"$ kubectl get sagas   (t={time.monotonic() - deadline + timeout:5.1f}s)\n{table}", flush=True)
            last = table
        if all(phases.get(n) in TERMINAL for n in names):
            return
        time.sleep(0.25)
    raise TimeoutError(f"the demo sagas did not finish in {timeout:.0f}s")


def print_ledger(ledger: dict[str, Any]) -> None:
    print("users (balance, cents):   " + ", ".join(f"{u}={b}" for u, b in ledger["users"].items()))
    print("agents (balance, cents):  " + ", ".join(f"{a}={v['balance']}" for a, v in ledger["agents"].items()))
    print("purchases:")
    for p in ledger["purchases"]:
        print(f"  {p['name']:<40} {p['buyer']:<6} {p['video']:<8} {p['cents']:>6}  {p['state']}")
    print("debits:")
    for d in ledger["debits"]:
        print(f"  {d['user']:<6} {d['cents']:>6}  {'refunded' if d['refunded'] else 'kept'}")
    print("credits:")
    for c in ledger["credits"]:
        print(f"  {c['agent']:<14} {c['cents']:>6}  {'reversed' if c['reversed'] else 'kept'}")
    print(f"money total: {ledger['moneyTotal']} cents")


def run(examples: Path, stack_dir: Path, timeout: float) -> int:
    manifests = load_examples(examples)
    if not manifests:
        print(f"no Saga manifests in {examples}", file=sys.stderr)
        return 2
    with _endpoints(stack_dir) as endpoints, tempfile.TemporaryDirectory(prefix="saga-demo-") as tmp:
        world = SagaWorld(endpoints, Path(tmp))
        _say("installing the CRD, starting the operator and the participants videos, users, agents")
        with world:
            names = [m["metadata"]["name"] for m in manifests]
            for name in names:  # a re-run starts from scratch: the demo's sagas are its own
                world.endpoints.kubectl("delete", "saga", name, "-n", "default", "--ignore-not-found", "--wait=true")
            total_before = world.ledger()["moneyTotal"]
            _say(f"kubectl apply -f {examples.relative_to(REPO) if examples.is_relative_to(REPO) else examples}")
            templates = load_examples(examples, "SagaTemplate")
            if templates:
                _say(f"kubectl apply the SagaTemplates: {', '.join(t['metadata']['name'] for t in templates)}")
                world.apply_all(templates)
            world.apply_all(manifests)
            watch(world, names, timeout)
            _say("data passed between steps")
            show_inputs(world, manifests)
            _say("the ledgers")
            ledger = world.ledger()
            print_ledger(ledger)
            return _verdict(world, manifests, ledger, total_before)


def _verdict(world: SagaWorld, manifests: list[dict[str, Any]], ledger: dict[str, Any], total_before: int) -> int:
    _say("verdict")
    failures = []
    phases = world.phases()
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        expected = (manifest["metadata"].get("annotations") or {}).get(EXPECTED)
        ok = expected is None or phases.get(name) == expected
        print(f"  {name:<32} {phases.get(name, '?'):<12} expected {expected or 'any'}  {'ok' if ok else 'WRONG'}")
        if not ok:
            failures.append(name)
    balanced = ledger["moneyTotal"] == total_before
    print(f"  money before {total_before}, after {ledger['moneyTotal']}: {'balanced' if balanced else 'NOT BALANCED'}")
    consistent = bool(ledger.get("consistent", True))
    print(f"  every saga's effects all present or all undone: {'yes' if consistent else 'NO'}")
    if failures or not balanced or not consistent:
        print("demo FAILED", file=sys.stderr)
        return 1
    print("demo passed: every saga ended as expected and the money balances")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga_harness.demo", description=__doc__)
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    parser.add_argument("--stack-dir", type=Path, default=REPO / ".stack")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    return run(args.examples.resolve(), args.stack_dir.resolve(), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
