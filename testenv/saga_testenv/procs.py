"""Starting and stopping the stack's server processes, by pid only.

Every server runs in its own session (so its own process group), with stdout and stderr in a log file
and a pid file (JSON: pid, the kernel's start time of that pid, argv) in the stack directory. Stopping
sends SIGTERM to the process group, waits, then SIGKILLs what is left. A pid is only signalled while its
start time still matches the pid file, so a recycled pid of an unrelated process is never touched.

A stack owned by a test run also asks the kernel (``PR_SET_PDEATHSIG``) to SIGKILL each server when the
process that started it dies, so even a SIGKILLed pytest leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None

# Popen objects of the children this process started, so that they can be reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: int
    argv: list[str]
    log: str

    def running(self) -> bool:
        return _start_time(self.pid) == self.start_time

    def exit_code(self) -> int | None:
        """The exit code if this process started it and it has exited, else None."""
        child = _CHILDREN.get(self.pid)
        return child.poll() if child is not None else None


def _start_time(pid: int) -> int | None:
    """Start time of a live pid in clock ticks since boot, or None once it has exited.

    For a child of this process, "exited" means reaped: its /proc entry may show a zombie while its
    other threads are still going away, before waitpid() reports it (seen with the JVM).
    """
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its closing paren
    fields = stat[stat.rindex(")") + 2 :].split()
    if child is None and fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all bound at once, so no duplicates)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent(parent: int) -> Callable[[], None]:
    libc = _LIBC

    def preexec() -> None:
        # SIGKILL, not SIGTERM: all servers would get it at once, and a kube-apiserver whose etcd is
        # shutting down too hangs in its graceful shutdown. The owner is gone; the data is throwaway.
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool,
    secrets: Sequence[str] = (),
) -> ProcessRecord:
    """Start ``argv`` in its own session with output to ``run_dir/logs/<name>.log``; write its pid file.

    Each of ``secrets`` that occurs in an argument is replaced by ``<redacted>`` in the pid file (and in
    the returned record): it records the command line, and anyone may read it.
    """
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids = run_dir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd or run_dir,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()) if die_with_parent else None,
        )
    _CHILDREN[child.pid] = child
    started = _start_time(child.pid)
    recorded = list(argv)
    for secret in secrets:
        recorded = [arg.replace(secret, "<redacted>") for arg in recorded]
    record = ProcessRecord(name, child.pid, started if started is not None else -1, recorded, str(log_path))
    tmp = pids / f".{name}.pid.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, pids / f"{name}.pid")
    return record


def read_records(run_dir: Path) -> list[ProcessRecord]:
    out = []
    for path in sorted((run_dir / "pids").glob("*.pid")):
        try:
            out.append(ProcessRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def signal_group(record: ProcessRecord, sig: signal.Signals) -> None:
    if not record.running():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # each server is a session leader, so its process group id is its pid
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)


def terminate(
    records: Iterable[ProcessRecord],
    *,
    run_dir: Path | None = None,
    timeout: float = 15.0,
    last: Iterable[str] = ("etcd",),
) -> list[str]:
    """SIGTERM every still-running record's process group, SIGKILL after ``timeout``; remove pid files.

    The processes named in ``last`` are stopped only after the others: a kube-apiserver whose etcd goes
    away at the same moment hangs in its graceful shutdown instead of exiting in a second.
    Returns the names of the processes that had to be killed.
    """
    records = list(records)
    late = set(last)
    first = [r for r in records if r.name not in late]
    if first and len(first) < len(records):
        killed = terminate(first, run_dir=run_dir, timeout=timeout, last=())
        return killed + terminate([r for r in records if r.name in late], run_dir=run_dir, timeout=timeout, last=())
    for record in records:
        signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(r.running() for r in records):
        time.sleep(0.1)
    killed = []
    for record in records:
        if record.running():
            killed.append(record.name)
            signal_group(record, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(r.running() for r in records):
        time.sleep(0.05)
    for record in records:
        child = _CHILDREN.pop(record.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)
        if run_dir is not None and not record.running():
            with contextlib.suppress(FileNotFoundError):
                (run_dir / "pids" / f"{record.name}.pid").unlink()
    return killed


def log_tail(record: ProcessRecord, lines: int = 30) -> str:
    try:
        text = Path(record.log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
