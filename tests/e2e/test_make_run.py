"""`make run` (python -m saga_harness.run): the operator and the participants in the foreground against a
running stack; a saga runs through them; SIGINT (Ctrl-C) stops them all and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from saga_harness.manifests import buy_video_saga
from saga_testenv.stack import Stack, StackEndpoints

pytestmark = pytest.mark.stack

BANNER = "are running (Ctrl-C stops them all)"


def wait_for(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text(errors="replace")
        if text in out:
            return out
        assert process.poll() is None, f"make run exited {process.returncode}:\n{out}"
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} after {timeout:.0f}s:\n{path.read_text(errors='replace')}")


def test_make_run_runs_a_saga_and_stops_on_sigint(stack: StackEndpoints, tmp_path: Path) -> None:
    namespace = f"run-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", namespace, check=True)
    output = tmp_path / "make-run.out"
    stack_dir = stack.directory if isinstance(stack, Stack) else tmp_path / "no-stack-here"
    argv = [sys.executable, "-m", "saga_harness.run", "--stack-dir", str(stack_dir), "--namespace", namespace]
    with output.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **stack.env()})
    try:
        banner = wait_for(output, BANNER, process, timeout=240)
        services = dict(re.findall(r"^  (operator|participant-\w+)\s+(http://127\.0\.0\.1:\d+)", banner, re.M))
        assert sorted(services) == ["operator", "participant-agents", "participant-users", "participant-videos"]
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", banner)]
        assert len(pids) == 4 and len(set(services.values())) == 4  # a port of its own each
        for url in services.values():
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                assert response.status == 200
        run_dir = Path(re.search(r"run directory\s+(\S+)", banner).group(1))  # type: ignore[union-attr]
        assert run_dir.is_dir()

        manifest = buy_video_saga(
            "run-ok", {"buyer": "alice", "video": "v-3", "price": 300, "agent": "bob-agency"}, namespace=namespace
        )
        stack.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=True)
        deadline = time.monotonic() + 90
        phase = ""
        while phase != "Succeeded":
            assert time.monotonic() < deadline, f"saga not Succeeded: {phase!r}\n{output.read_text()[-3000:]}"
            time.sleep(0.5)
            phase = stack.kubectl("get", "saga", "run-ok", "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
        # The processes' logs follow in the foreground, one prefix each.
        assert "[operator] " in wait_for(output, "[participant-agents] ", process, timeout=10)

        # Deleted while the operator runs, which takes its finalizer off: the namespace can go afterwards.
        stack.kubectl("delete", "saga", "run-ok", "-n", namespace, "--timeout=60s", check=True)

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 0
        text = output.read_text()
        assert "SIGINT: stopping" in text and text.rstrip().endswith("stopped; nothing left running")
        deadline = time.monotonic() + 10  # an orphan is reaped by init a moment after make run exits
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
        assert not run_dir.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stack.kubectl("delete", "namespace", namespace, "--wait=false")
