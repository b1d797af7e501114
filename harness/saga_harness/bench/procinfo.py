"""CPU time and memory of processes from /proc, and the facts of the machine a result was taken on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of `pid` (its threads included), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak resident set since the process started), in MiB."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def open_sockets(pid: int) -> int:
    """How many sockets the process holds open (connections to the API server and Kafka, listeners)."""
    count = 0
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(fd.path).startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        return 0
    return count


@dataclass(frozen=True)
class ProcSample:
    pid: int
    name: str
    cmdline: str
    cpu: float


def all_processes() -> dict[int, ProcSample]:
    """Every process's CPU seconds now: diff two samples to see what ran during a phase."""
    out: dict[int, ProcSample] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        out[pid] = ProcSample(pid, name, cmdline[:160], cpu)
    return out


def busiest(
    before: dict[int, ProcSample], after: dict[int, ProcSample], labels: dict[int, str], top: int = 10
) -> list[dict[str, Any]]:
    """CPU seconds used between two samples, per process, busiest first; `labels` names our own."""
    used: list[dict[str, Any]] = []
    for pid, sample in after.items():
        start = before.get(pid)
        delta = sample.cpu - (start.cpu if start is not None and start.name == sample.name else 0.0)
        if delta >= 0.05:
            used.append(
                {
                    "pid": pid,
                    "role": labels.get(pid, "other"),
                    "cpu_seconds": round(delta, 2),
                    "command": sample.cmdline or sample.name,
                }
            )
    used.sort(key=lambda row: -float(row["cpu_seconds"]))
    return used[:top]


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _git(repo: Path) -> dict[str, Any]:
    def run(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return result.stdout.strip()

    commit = run("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def machine_facts(repo: Path) -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in ("kopf", "kubernetes_asyncio", "aiokafka", "aiohttp", "pydantic", "prometheus-client"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": round(_mem_total_mib()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": packages,
        "git": _git(repo),
    }
