"""``python -m saga_testenv up|down|status|env|build|cache-dir`` (also the ``saga-testenv`` script)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import build, versions
from .procs import read_records
from .stack import Stack, StackError


def _log(message: str) -> None:
    print(f"[testenv] {message}", flush=True)


def _up(directory: Path) -> int:
    existing = Stack.attach(directory, log=_log)
    if existing is not None:
        print(f"the local stack is already up in {directory}; nothing to do")
        print(existing.describe())
        print(f"use it:  source {directory / 'env'}")
        return 0
    stopped = Stack.stop_directory(directory, log=_log)
    if stopped:
        _log(f"stopped the remains of a stack that was partly down: {', '.join(r.name for r in stopped)}")
    started = time.monotonic()
    stack = Stack(directory, detached=True, log=_log).start()
    _log(f"up in {time.monotonic() - started:.1f}s (servers answering after {stack.timings['total']:.1f}s)")
    print(stack.describe())
    print(f"use it:  source {directory / 'env'}     stop it:  make down")
    return 0


def _down(directory: Path) -> int:
    stopped = Stack.stop_directory(directory, log=_log)
    if stopped:
        _log(f"stopped {', '.join(f'{r.name} (pid {r.pid})' for r in stopped)}")
    else:
        _log(f"no local stack running in {directory}")
    return 0


def _status(directory: Path, quiet: bool) -> int:
    stack = Stack.attach(directory, log=_log)
    if stack is None:
        running = [r for r in read_records(directory) if r.running()]
        if running:
            if not quiet:
                names = ", ".join(f"{r.name} (pid {r.pid})" for r in running)
                print(f"the local stack in {directory} is only partly running: {names}; `make down` stops it")
            return 2
        if not quiet:
            print(f"the local stack is not up (in {directory})")
        return 1
    health = stack.healthy()
    if not quiet:
        print(stack.describe())
        for record in stack.records:
            print(f"  {record.name:<24} pid {record.pid:<8} log {record.log}")
        for name, ok in health.items():
            print(f"  {name:<24} {'ok' if ok else 'NOT OK'}")
    return 0 if all(health.values()) else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga_testenv", description=__doc__)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("SAGA_STACK_DIR", ".stack")),
        help="stack directory (default: $SAGA_STACK_DIR or .stack)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the stack in the background (builds what the cache lacks)")
    sub.add_parser("down", help="stop the stack and every process of it")
    status = sub.add_parser("status", help="exit 0 if up and healthy, 1 if not up, 2 if unhealthy")
    status.add_argument("--quiet", "-q", action="store_true")
    sub.add_parser("env", help="print the shell lines of the env file")
    sub.add_parser("build", help="build/fetch the cached binaries and jars only")
    sub.add_parser("cache-dir", help="print the cache directory of the pinned versions")
    args = parser.parse_args(argv)
    directory: Path = args.dir.absolute()
    try:
        if args.command == "up":
            return _up(directory)
        if args.command == "down":
            return _down(directory)
        if args.command == "status":
            return _status(directory, args.quiet)
        if args.command == "env":
            env_file = directory / "env"
            if Stack.attach(directory) is None or not env_file.is_file():
                print(f"the local stack is not up (in {directory})", file=sys.stderr)
                return 1
            sys.stdout.write(env_file.read_text())
            return 0
        if args.command == "build":
            started = time.monotonic()
            artifacts = build.ensure_built(_log)
            _log(
                f"Kubernetes {versions.KUBERNETES_VERSION}, etcd {versions.ETCD_VERSION}, "
                f"Kafka {versions.KAFKA_VERSION} ready in {build.cache_dir()} "
                f"({time.monotonic() - started:.1f}s)"
            )
            for name, path in vars(artifacts).items():
                print(f"  {name:<24} {path}")
            return 0
        if args.command == "cache-dir":
            print(build.cache_dir())
            return 0
    except (StackError, build.BuildError) as exc:
        print(f"[testenv] error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2
