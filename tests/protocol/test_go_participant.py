"""The conformance kit against the Go participant of examples/go-participant, over the real broker.

The participant was written from docs/protocol.md alone; this proves the docs suffice. It is built with
`go build` into a temporary folder (the module cache may be cold: the modules come from the Go module
proxy), its own tests run with `go test ./...`, and the kit runs once against it, starting, killing and
restarting it as a person would; each rule is one test. Without `go` on PATH everything here skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kit_support import ProtocolKafka, run_kit

from saga_conformance.rules import RULES

MODULE = Path(__file__).resolve().parents[2] / "examples" / "go-participant"
GO = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)

PAYLOAD = {"account": "alice", "amount": 100}
FAILING = {"account": "dave", "amount": 100}  # dave has nothing: InsufficientFunds
SLOW = {"simulateDelaySeconds": 5}  # obeyed only with --allow-fault-injection

pytestmark = pytest.mark.skipif(GO is None, reason="`go` is not installed (Go 1.26 builds examples/go-participant)")


def _go(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    assert GO is not None
    env = {**os.environ, "CGO_ENABLED": "0"}  # the SQLite driver is pure Go
    return subprocess.run([GO, *args], cwd=MODULE, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("go-participant") / "go-participant"
    started = time.monotonic()
    done = _go("build", "-o", str(out), ".")
    assert done.returncode == 0, f"go build failed:\n{done.stderr[-4000:]}"
    print(f"go build: {time.monotonic() - started:.1f} s")
    return out


def test_go_test_passes() -> None:
    done = _go("test", "./...")
    assert done.returncode == 0, f"go test failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def verdicts(
    binary: Path, protocol_kafka: ProtocolKafka, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    data = tmp_path_factory.mktemp("kit-go")
    name = f"wallet-kit-{uuid.uuid4().hex[:8]}"  # topics and a consumer group of its own
    participant = (
        protocol_kafka.participant(name)  # its own principal and ACLs: SASL_SSL, SCRAM-SHA-512, the CA
        + f"{binary} --name {name} --database {data / 'wallet.db'} --seed alice=1000000,dave=0 "
        f"--allowed-namespaces conformance --allow-fault-injection --bootstrap-servers {protocol_kafka.bootstrap}"
    )
    report = data / "verdicts.json"
    argv = [
        sys.executable,
        "-m",
        "saga_conformance",
        "--participant",
        name,
        "--action",
        "reserve",
        "--compensation",
        "release",
        "--payload",
        json.dumps(PAYLOAD),
        "--failing-payload",
        json.dumps(FAILING),
        "--slow-payload",
        json.dumps(SLOW),
        "--slow-seconds",
        str(SLOW["simulateDelaySeconds"]),
        "--foreign-namespace",
        "intruders",
        "--participant-command",
        participant,
        "--bootstrap-servers",
        protocol_kafka.bootstrap,
        "--log-dir",
        str(data / "logs"),
        "--json",
        str(report),
    ]
    found: dict[str, dict[str, Any]] = run_kit(argv, report, protocol_kafka.kit_env)
    return found


@pytest.mark.stack
@pytest.mark.parametrize("rule", [rule.name for rule in RULES])
def test_the_go_participant_meets_the_rule(rule: str, verdicts: dict[str, dict[str, Any]]) -> None:
    verdict = verdicts[rule]
    assert verdict["status"] == "pass", f"{rule}: {verdict['status']}: {verdict['detail']}"
