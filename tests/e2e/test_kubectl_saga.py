"""`kubectl saga` and what `kubectl get sagas` shows, on the real stack with a SagaWorld.

The plugin runs as kubectl runs it: `kubectl saga ...`, with the console script `kubectl-saga` on PATH and the
stack's KUBECONFIG. The examples in examples/ are applied as a user applies them (twice: the second apply of
an unchanged manifest must say `unchanged`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_harness.manifests import buy_video_saga
from saga_harness.world import REPO, SagaWorld
from saga_testenv.kubectl import run_kubectl

pytestmark = pytest.mark.stack

Names = Callable[[str], str]
EXAMPLES = REPO / "examples"
SUCCEEDS, AT_DEBIT, AT_AGENT = "buy-video-succeeds", "buy-video-fails-at-debit", "buy-video-fails-at-agent"


def kubectl_saga(world: SagaWorld, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl saga ARGS` through kubectl's plugin lookup: kubectl-saga is found on PATH."""
    scripts = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "KUBECONFIG": str(world.endpoints.kubeconfig),
        "PATH": scripts + os.pathsep + os.environ["PATH"],
    }
    return run_kubectl(["saga", *args], env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def row(table: str, name: str) -> list[str]:
    for line in table.splitlines():
        if line.split(maxsplit=1)[0] == name:
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row {name} in\n{table}")


@pytest.fixture(scope="module")
def examples(world: SagaWorld) -> dict[str, dict[str, Any]]:
    """The three examples applied (as a user does, from the folder) and finished; the first apply's output."""
    first = world.kubectl("apply", "-f", str(EXAMPLES))
    assert first.count("created") == 3, first
    return world.wait_terminal([SUCCEEDS, AT_DEBIT, AT_AGENT], timeout=120)


def test_applying_an_unchanged_example_again_says_unchanged(world: SagaWorld, examples: dict[str, Any]) -> None:
    again = world.kubectl("apply", "-f", str(EXAMPLES))
    assert again.splitlines() == [f"saga.saga.dev/{name} unchanged" for name in (AT_AGENT, AT_DEBIT, SUCCEEDS)], again
    single = world.kubectl("apply", "-f", str(EXAMPLES / f"{SUCCEEDS}.yaml"))
    assert single.strip() == f"saga.saga.dev/{SUCCEEDS} unchanged"
    # The operator still runs with the default the CRD no longer fills in: the model's 30 s.
    stored = world.get(SUCCEEDS)["spec"]["steps"][0]
    assert "timeoutSeconds" not in stored


def test_kubectl_get_sagas_reads_at_a_glance(world: SagaWorld, examples: dict[str, Any]) -> None:
    table = world.kubectl("get", "sagas", "-n", "default", SUCCEEDS, AT_DEBIT, AT_AGENT)
    print(table)
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "STEP", "PROGRESS", "REASON", "DURATION", "AGE"]
    assert row(table, SUCCEEDS)[1:3] == ["Succeeded", "3/3 done"]
    assert row(table, AT_DEBIT)[1:3] == ["Compensated", "1/3 done, 1 undone"]
    assert row(table, AT_AGENT)[1:3] == ["Compensated", "2/3 done, 2 undone"]
    assert re.fullmatch(r"\d+(\.\d)?s", row(table, SUCCEEDS)[3]), table
    compensated = world.kubectl(
        "get", "sagas", "-n", "default", "--field-selector", "status.phase=Compensated", "-o", "name"
    )
    found = set(compensated.split())
    assert {f"saga.saga.dev/{AT_DEBIT}", f"saga.saga.dev/{AT_AGENT}"} <= found
    assert f"saga.saga.dev/{SUCCEEDS}" not in found


def test_list(world: SagaWorld, examples: dict[str, Any]) -> None:
    table = ok(kubectl_saga(world, "list", "-n", "default"))
    print(table)
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "STEP", "PROGRESS", "DURATION", "REASON", "AGE"]
    assert row(table, AT_AGENT)[1:3] == ["Compensated", "2/3 done, 2 undone"]
    everywhere = ok(kubectl_saga(world, "list", "--all-namespaces"))
    assert everywhere.split("\n")[0].split()[0] == "NAMESPACE"
    assert row(everywhere, "default")  # a row per saga, namespace first


def bar_of(lines: list[str], step: str, kind: str) -> str:
    """The bar a describe drew for `step`'s action or undo: the cells under the time axis."""
    axis = next(line for line in lines if set(line.strip()) <= {"+", "-"} and "+" in line)
    start, end = axis.index("+"), axis.rindex("+") + 1
    current = None
    for line in lines:
        name = line[:start].split()
        if name and name[0] not in ("STEP",):
            current = name[0] if len(name) == 2 else current
        if current == step and line[:start].split()[-1:] == [kind]:
            return line[start:end]
    raise AssertionError(f"no {kind} bar for {step} in\n" + "\n".join(lines))


def test_describe_of_a_succeeded_saga_draws_three_actions_one_after_another(
    world: SagaWorld, examples: dict[str, Any]
) -> None:
    out = ok(kubectl_saga(world, "describe", SUCCEEDS, "-n", "default"))
    print(out)
    lines = out.splitlines()
    assert lines[0] == f"Saga default/{SUCCEEDS}"
    bars = [bar_of(lines, step, "action") for step in ("record-purchase", "debit-buyer", "credit-agent")]
    for bar in bars:
        assert bar.rstrip().endswith(">") and "=" in bar
    ends = [bar.rstrip().index(">") for bar in bars]
    starts = [len(bar) - len(bar.lstrip()) for bar in bars]
    assert ends == sorted(ends) and starts == sorted(starts), bars  # each after the one before
    assert not any(line.split()[:1] == ["undo"] for line in lines)
    assert "Why: buy-video-succeeds succeeded" in out


def test_describe_of_a_compensated_saga_draws_the_undo_after_the_refusal(
    world: SagaWorld, examples: dict[str, Any]
) -> None:
    out = ok(kubectl_saga(world, "describe", AT_AGENT))  # the context's namespace: default
    print(out)
    lines = out.splitlines()
    refused = bar_of(lines, "credit-agent", "action")
    assert refused.rstrip().endswith("X")
    undo_debit, undo_record = bar_of(lines, "debit-buyer", "undo"), bar_of(lines, "record-purchase", "undo")
    for undo in (undo_debit, undo_record):
        assert undo.rstrip().endswith("<")
        # A compensation starts once the refusal is in, never before.
        assert len(undo) - len(undo.lstrip()) >= refused.rstrip().index("X")
    # Reverse order: debit-buyer is undone before record-purchase.
    assert undo_debit.rstrip().index("<") <= undo_record.rstrip().index("<")
    assert "error: AgentClosed" in out
    assert "2/3 done, 2 undone" in lines[1]
    events = lines[lines.index("Events (oldest first):") + 1 :]
    reasons = [line.split()[1] for line in events if line.startswith("  ") and len(line.split()) > 1][:4]
    assert reasons[:2] == ["Started", "StepRefused"] and "Compensated" in reasons


def test_why_names_the_cause_and_the_runbook(world: SagaWorld, examples: dict[str, Any]) -> None:
    out = ok(kubectl_saga(world, "why", AT_DEBIT))
    print(out)
    first, todo, link = out.splitlines()
    assert "InsufficientFunds" in first and "undone" in first
    assert todo.startswith("What to do:")
    assert link == "See docs/operations.md#watching-sagas"
    missing = kubectl_saga(world, "why", "no-such-saga")
    assert missing.returncode == 1 and 'saga "no-such-saga" not found in namespace "default"' in missing.stderr


def wait_phase(world: SagaWorld, name: str, phases: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = world.get(name)
        if (body.get("status") or {}).get("phase") in phases:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not in {phases}: {json.dumps(body.get('status'))}")
        time.sleep(0.2)


def test_abort_a_running_saga_and_not_a_finished_one(world: SagaWorld, saga_name: Names) -> None:
    payload = {
        "buyer": "alice",
        "video": "v-7",
        "price": 100,
        "agent": "bob-agency",
        "simulate": {"users": {"delaySeconds": 15}},
    }
    name = world.apply(buy_video_saga(saga_name("abort"), payload, timeout_seconds=30))
    deadline = time.monotonic() + 30
    while (world.get(name).get("status") or {}).get("currentStep") != "debit-buyer":  # held there 15 s
        assert time.monotonic() < deadline, "never reached debit-buyer"
        time.sleep(0.1)
    said = ok(kubectl_saga(world, "abort", name))
    assert "abort requested" in said
    body = world.wait_terminal([name], timeout=60)[name]
    assert body["status"]["phase"] == "Compensated" and body["spec"]["abort"] is True
    again = kubectl_saga(world, "abort", name)
    assert again.returncode == 1 and "already finished (Compensated)" in again.stderr
    out = ok(kubectl_saga(world, "describe", name))
    print(out)
    assert "AbortRequested" in out


def test_retry_a_stuck_compensation_and_why_says_what_to_do(
    world: SagaWorld, saga_name: Names, examples: dict[str, Any]
) -> None:
    refused = kubectl_saga(world, "retry", SUCCEEDS)
    assert refused.returncode == 1 and "is Succeeded, not Failed: there is nothing to retry" in refused.stderr
    videos = world.participants["videos"]
    videos.kill()  # nobody answers record-purchase: it is given up, and its compensation finds nobody either
    try:
        payload = {"buyer": "alice", "video": "v-8", "price": 100, "agent": "bob-agency"}
        manifest = buy_video_saga(
            saga_name("retry"),
            payload,
            timeout_seconds=1,
            retry={"limit": 1, "backoffSeconds": 1, "maxBackoffSeconds": 1},
        )
        manifest["spec"]["compensationAttemptLimit"] = 2
        name = world.apply(manifest)
        wait_phase(world, name, {"Failed"})
        why = ok(kubectl_saga(world, "why", name))
        print(why)
        assert why.splitlines()[0].startswith(
            f"{name} is Failed (CompensationStuck): compensation of step record-purchase"
        )
        assert "kubectl saga retry" in why
        assert why.splitlines()[-1] == "See docs/operations.md#phase-failed-reason-compensationstuck"
        listed = ok(kubectl_saga(world, "list"))
        print(listed)
        assert row(listed, name)[1] == "Failed" and row(listed, name)[-2] == "CompensationStuck"
        out = ok(kubectl_saga(world, "describe", name))
        print(out)
        lines = out.splitlines()
        assert bar_of(lines, "record-purchase", "action").rstrip().endswith("?")  # given up: outcome unknown
        assert bar_of(lines, "record-purchase", "undo").rstrip().endswith("!")  # stuck: a person must act
        action_line = next(line for line in lines if line.startswith("record-purchase"))
        assert action_line.endswith("Compensating, 2 attempts")  # both attempts sent, then given up
    finally:
        videos.start()
    said = ok(kubectl_saga(world, "retry", name))
    assert "retry 1 requested" in said
    body = wait_phase(world, name, {"Compensated"})
    assert body["status"]["retriesGranted"] == 1
    assert body["metadata"]["annotations"]["saga.dev/retry"].isdigit()


def test_the_example_manifests_are_what_this_module_applies() -> None:
    names = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in EXAMPLES.glob("*.yaml"))
    assert names == sorted([SUCCEEDS, AT_DEBIT, AT_AGENT])
