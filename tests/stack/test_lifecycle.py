"""The launcher's own promises: `up` is idempotent, `down` and an interrupted owner leave no process.

Each test starts a second, private stack (a few seconds each with the binaries cached)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from saga_testenv import StackEndpoints
from saga_testenv.procs import ProcessRecord, read_records, terminate

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(
        StackEndpoints.from_environment() is not None,
        reason="KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS name a foreign stack: the launcher is not under test",
    ),
]

SERVERS = {"etcd", "kube-apiserver", "kube-controller-manager", "kafka"}


def _cli(directory: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga_testenv", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _wait_gone(records: list[ProcessRecord], timeout: float = 30.0) -> list[ProcessRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [r for r in records if r.running()]
        if not alive:
            return []
        time.sleep(0.2)
    return [r for r in records if r.running()]


def test_up_twice_then_down_leaves_no_process(tmp_path: Path) -> None:
    """Also: the stack has no plaintext listener, whose health check (`status`) reaches the broker over
    SASL_SSL as the admin. The transition's old switch is gone: even set, it opens nothing."""
    directory = tmp_path / "stack"
    up = _cli(directory, "up", env={"SAGA_TESTENV_KAFKA_PLAINTEXT_LISTENER": "1"})
    assert up.returncode == 0, up.stdout + up.stderr
    records = read_records(directory)
    assert {r.name for r in records} == SERVERS
    assert all(r.running() for r in records)
    env = (directory / "env").read_text()
    assert f"export KUBECONFIG={directory / 'kubeconfig'}" in env
    assert "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in env
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in env.splitlines() if line.startswith("export")
    )
    # no plaintext listener: the one bootstrap address is the secured listener
    assert exported["KAFKA_BOOTSTRAP_SERVERS"] == exported["SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP"]
    assert "SAGA_TESTENV_KAFKA_PLAINTEXT_BOOTSTRAP" not in exported
    assert exported["SAGA_TESTENV_KAFKA_CA_FILE"] == str(directory / "pki" / "ca.crt")
    assert exported["SAGA_TESTENV_KAFKA_CREDENTIALS_DIR"] == str(directory / "kafka" / "credentials")
    assert ":PLAINTEXT" not in (directory / "kafka" / "server.properties").read_text()
    try:
        again = _cli(directory, "up")
        assert again.returncode == 0
        assert "already up" in again.stdout
        assert [(r.pid, r.start_time) for r in read_records(directory)] == [(r.pid, r.start_time) for r in records]
        status = _cli(directory, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "kafka metadata (SASL_SSL, saga-admin)" in status.stdout
        assert "PLAINTEXT" not in status.stdout
    finally:
        down = _cli(directory, "down")
        terminate(records)
    assert down.returncode == 0, down.stderr
    assert _wait_gone(records, timeout=5) == []
    assert read_records(directory) == []
    assert not (directory / "env").exists()
    assert _cli(directory, "status", "-q").returncode == 1


_OWNER = textwrap.dedent(
    """
    import json, sys, time
    from saga_testenv import Stack
    stack = Stack(sys.argv[1], detached=False, log=lambda m: None).start()
    print(json.dumps([r.pid for r in stack.records]), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_owner_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    """A test run killed mid-way: SIGTERM runs the cleanup handler; SIGKILL relies on PR_SET_PDEATHSIG."""
    directory = tmp_path / "stack"
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, "the owner process exited before the stack was up"
        pids = json.loads(line)
        records = read_records(directory)
        assert {r.pid for r in records} == set(pids) and len(records) == len(SERVERS)
        os.kill(owner.pid, sig)
        owner.wait(timeout=60)
        assert _wait_gone(records) == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        terminate(read_records(directory))  # whatever a failure above left behind
