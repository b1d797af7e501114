"""The project's own processes on the local stack: the operator and the participant services.

Used by the end-to-end tests, `make demo`, the chaos run and the benchmarks, so that each starts,
kills (SIGKILL, for crash tests) and restarts them the same way: by pid, in their own process group,
logs to files, ready when their HTTP /readyz answers.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from saga_testenv import procs


class ServiceError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    run_dir: Path
    http_port: int
    record: procs.ProcessRecord | None = None
    starts: int = 0
    kills: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True, timeout: float = 90.0) -> Service:
        if self.running():
            return self
        self.record = procs.spawn(self.name, self.argv, run_dir=self.run_dir, env=self.env, die_with_parent=True)
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return self.record is not None and self.record.running()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if self._get("/readyz") is not None:
                return
            time.sleep(0.2)
        raise ServiceError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, the crash a test wants: no clean-up handler runs."""
        if self.record is None:
            return
        procs.signal_group(self.record, signal.SIGKILL)
        self._wait_gone()
        self.kills += 1

    def stop(self) -> None:
        if self.record is not None:
            procs.terminate([self.record], run_dir=self.run_dir, timeout=10.0)

    def restart(self, wait: bool = True) -> None:
        self.kill()
        self.start(wait=wait)

    def _wait_gone(self) -> None:
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return procs.log_tail(self.record, lines) if self.record else ""

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except (urllib.error.URLError, OSError):
            return None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when absent)."""
        text = self._get("/metrics") or ""
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def operator_service(run_dir: Path, environment: Mapping[str, str], **settings: str) -> Service:
    """The operator, configured like in a cluster: through SAGA_* environment variables."""
    (port,) = procs.free_ports(1)
    env = {**environment, "SAGA_HTTP_PORT": str(port), "SAGA_HTTP_HOST": "127.0.0.1", **settings}
    return Service("operator", [sys.executable, "-m", "saga_operator"], env, run_dir, port)


def module_service(
    name: str, module: str, args: Sequence[str], run_dir: Path, environment: Mapping[str, str]
) -> Service:
    """`python -m <module> <args> --http-port <a free port>`: a process of ours with an HTTP /readyz."""
    (port,) = procs.free_ports(1)
    argv = [sys.executable, "-m", module, *args, "--http-port", str(port)]
    return Service(name, argv, dict(environment), run_dir, port)


def participant_service(
    name: str, data_dir: Path, run_dir: Path, environment: Mapping[str, str], *, reply_topic: str | None = None
) -> Service:
    """A buy-video participant process with its database in `data_dir`, replying to `reply_topic` (default
    its own saga.replies.<name>). Fault injection is on: the end-to-end tests, the demo and the chaos run
    make participants slow or flaky through a saga's `simulate` payload (off in a real deployment)."""
    args = ["run", name, "--data-dir", str(data_dir), "--allow-fault-injection"]
    if reply_topic is not None:
        args += ["--reply-topic", reply_topic]
    return module_service(f"participant-{name}", "saga_buyvideo.cli", args, run_dir, environment)
