"""Faults of the stack's own servers: the Kafka broker crashed and restarted, the API server frozen.

Used by the chaos run (`saga_harness.chaos`) and by `tests/chaos`. Everything goes through the
stack's process records (`procs`): a server is signalled by pid, and only while the pid file's start
time still matches, never by name.

* Kafka is restarted with the very command line it was started with: the same ports, the same
  `server.properties`, the same data directory, so topics, committed offsets and producer state survive
  the crash like they would on a real broker's disk.
* The API server is frozen with SIGSTOP and thawed with SIGCONT: its TCP connections stay open but
  nothing answers, which is what a hung or partitioned control plane looks like to a client (a
  refused connection is the easy case).

Call these from the thread that owns the stack (the main thread). A stack started for a test asks the
kernel to kill each server when the *thread* that spawned it exits (PR_SET_PDEATHSIG), so a broker
respawned from a short-lived worker thread would die with that thread.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from saga_testenv import procs
from saga_testenv.kafka import run_sync, wait_for_broker
from saga_testenv.stack import Stack

from . import kafka_access
from .services import Service


class FaultError(RuntimeError):
    pass


@dataclass
class StackFaults:
    """Crash, restart and freeze the servers of a stack started here (`Stack`, not a foreign cluster)."""

    stack: Stack
    #: How often each fault was injected, by name (for the chaos run's report).
    counts: dict[str, int] = field(default_factory=dict)

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def record(self, name: str) -> procs.ProcessRecord:
        """The current process record of one server (`kafka`, `kube-apiserver`, `etcd`, ...)."""
        records = self.stack.records or procs.read_records(self.stack.directory)
        for record in records:
            if record.name == name:
                return record
        raise FaultError(f"the stack in {self.stack.directory} has no process named {name!r}")

    def _replace(self, old: procs.ProcessRecord, new: procs.ProcessRecord) -> None:
        if not self.stack.records:
            self.stack.records = procs.read_records(self.stack.directory)
        self.stack.records = [new if r == old else r for r in self.stack.records]

    # ---- Kafka --------------------------------------------------------------------------------

    def kafka_running(self) -> bool:
        return self.record("kafka").running()

    def stop_kafka(self, *, kill: bool = True, timeout: float = 30.0) -> None:
        """SIGKILL (a crash: no controlled shutdown, logs recovered at the next start) or SIGTERM."""
        record = self.record("kafka")
        if not record.running():
            return
        procs.signal_group(record, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while record.running():
            if time.monotonic() > deadline:
                procs.signal_group(record, signal.SIGKILL)
            if time.monotonic() > deadline + 10:
                raise FaultError(f"Kafka (pid {record.pid}) did not exit")
            time.sleep(0.05)
        self._count("kafka-kill" if kill else "kafka-stop")

    def start_kafka(self, *, wait: bool = True, timeout: float = 120.0) -> None:
        """Start the broker again with its original command line (same ports, same data directory)."""
        old = self.record("kafka")
        if old.running():
            return
        new = procs.spawn(
            "kafka", old.argv, run_dir=self.stack.directory, env=None, die_with_parent=not self.stack.detached
        )
        self._replace(old, new)
        self._count("kafka-start")
        if wait:
            self.wait_kafka(timeout)

    def wait_kafka(self, timeout: float = 120.0) -> None:
        record = self.record("kafka")
        deadline = time.monotonic() + timeout
        while True:
            if not record.running():
                raise FaultError(f"Kafka exited while restarting:\n{procs.log_tail(record)}")
            try:
                admin = kafka_access.client_options(self.stack)
                run_sync(wait_for_broker(admin.pop("bootstrap_servers"), timeout_s=5.0, **admin))
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise FaultError(f"Kafka not back after {timeout:.0f}s: {exc}") from exc

    def restart_kafka(self, *, down_for: float = 2.0, kill: bool = True, timeout: float = 120.0) -> None:
        self.stop_kafka(kill=kill)
        time.sleep(down_for)
        self.start_kafka(wait=True, timeout=timeout)

    @contextlib.contextmanager
    def kafka_down(self, *, kill: bool = True) -> Iterator[None]:
        """The broker is down inside the block and back (and answering) after it."""
        self.stop_kafka(kill=kill)
        try:
            yield
        finally:
            self.start_kafka(wait=True)

    # ---- the API server -----------------------------------------------------------------------

    def pause_apiserver(self) -> None:
        """Freeze kube-apiserver (SIGSTOP): connections stay open, requests hang, nothing is refused."""
        record = self.record("kube-apiserver")
        if not record.running():
            raise FaultError("kube-apiserver is not running")
        procs.signal_group(record, signal.SIGSTOP)
        self._count("apiserver-pause")

    def resume_apiserver(self) -> None:
        procs.signal_group(self.record("kube-apiserver"), signal.SIGCONT)

    @contextlib.contextmanager
    def apiserver_paused(self) -> Iterator[None]:
        self.pause_apiserver()
        try:
            yield
        finally:
            self.resume_apiserver()


# ---- the project's own processes ----------------------------------------------------------------


def pause_service(service: Service) -> None:
    """Freeze an operator or participant process (SIGSTOP): alive, connected, silent."""
    if service.record is None or not service.record.running():
        raise FaultError(f"{service.name} is not running")
    procs.signal_group(service.record, signal.SIGSTOP)


def resume_service(service: Service) -> None:
    if service.record is not None:
        procs.signal_group(service.record, signal.SIGCONT)


@contextlib.contextmanager
def service_paused(service: Service) -> Iterator[None]:
    pause_service(service)
    try:
        yield
    finally:
        resume_service(service)
