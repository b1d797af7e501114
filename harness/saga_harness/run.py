"""`make run`: the operator and the three buy-video participants in the foreground, against the stack that
`make up` started (or the cluster and broker named by KUBECONFIG and KAFKA_BOOTSTRAP_SERVERS).

What a world does before it starts them, done once here: the CRDs and the admission policies, the
participants' databases (seeded), the Kafka principals, their ACLs and the topics, as the admin. Every
process listens on a free port, printed with the commands to try; their logs follow, one prefix each.
Ctrl-C (SIGINT) or SIGTERM stops them all and removes the run's directory (`--keep` keeps its logs and
databases): nothing is left behind. docs/operations.md, "Running it yourself", shows the same by hand.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import IO

from saga_testenv import procs
from saga_testenv.stack import Stack, StackEndpoints

from .services import Service
from .world import REPO, SagaWorld


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def endpoints(stack_dir: Path) -> StackEndpoints | None:
    """The stack `make up` started in `stack_dir`, else the cluster and broker the environment names."""
    return Stack.attach(stack_dir, log=lambda _: None) or StackEndpoints.from_environment()


def services(world: SagaWorld) -> list[Service]:
    return [world.operator, *world.participants.values()]


def banner(world: SagaWorld, run_dir: Path, stack_dir: Path) -> str:
    lines = ["saga-operator and the buy-video participants are running (Ctrl-C stops them all):"]
    lines += [
        f"  {s.name:<20} {s.url}  (/readyz, /metrics)  pid {s.record.pid if s.record else '?'}" for s in services(world)
    ]
    lines += [
        f"  run directory        {run_dir}  (logs/, data/: removed on exit unless --keep)",
        "try, in another shell:",
        f"  source {stack_dir / 'env'}",
        "  kubectl apply -f examples/",
        "  kubectl get sagas            # or: kubectl saga list",
        "  kubectl saga describe buy-video-fails-at-debit",
    ]
    return "\n".join(lines)


def by_hand(world: SagaWorld) -> str:
    """The shell commands that start each process as `make run` does: every variable it is given, in full."""
    lines = []
    for service in services(world):
        # The stack's SAGA_TESTENV_* (the unprivileged token among them) are for the tests, not the processes.
        wanted = sorted((k, v) for k, v in service.env.items() if not k.startswith("SAGA_TESTENV_"))
        variables = " ".join(f"{key}={shlex.quote(value)}" for key, value in wanted)
        lines += [f"# {service.name}", f"env {variables} \\", f"  {shlex.join(service.argv)} &"]
    return "\n".join(lines)


def follow(logs: dict[str, IO[str]]) -> None:
    """Print what each process logged since the last call, each line with its name."""
    for name, handle in logs.items():
        for line in handle.readlines():
            print(f"[{name}] {line.rstrip()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saga_harness.run", description=__doc__.split("\n")[0])
    parser.add_argument("--stack-dir", type=Path, default=REPO / ".stack", help="the stack `make up` started")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, databases) on exit")
    parser.add_argument("--quiet", action="store_true", help="do not follow the processes' logs")
    parser.add_argument(
        "--provision-only",
        metavar="RUN_DIR",
        type=Path,
        help="install, seed the databases into RUN_DIR and provision Kafka, print the commands that start each "
        "process, and exit (the by-hand path of docs/operations.md)",
    )
    parser.add_argument("--namespace", default="default", help="the namespace the operator watches (default: default)")
    args = parser.parse_args(argv)
    found = endpoints(args.stack_dir)
    if found is None:
        print(
            f"make run: no stack in {args.stack_dir} and no KUBECONFIG/KAFKA_BOOTSTRAP_SERVERS: `make up` first",
            file=sys.stderr,
        )
        return 2
    if args.provision_only is not None:
        world = SagaWorld(found, args.provision_only.absolute(), operator_env={"SAGA_NAMESPACE": args.namespace})
        world.install_crd()
        world.seed()
        world.provision_kafka()
        print(by_hand(world))
        return 0
    run_dir = Path(tempfile.mkdtemp(prefix="saga-run-"))
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    world = SagaWorld(found, run_dir, operator_env={"SAGA_NAMESPACE": args.namespace})
    logs: dict[str, IO[str]] = {}
    try:
        print("installing the CRDs and policies, seeding the databases, provisioning Kafka ...", flush=True)
        world.start()
        print(banner(world, run_dir, args.stack_dir), flush=True)
        for service in services(world):
            if service.record is not None and not args.quiet:
                logs[service.name] = Path(service.record.log).open(errors="replace")
        while True:
            follow(logs)
            for service in services(world):
                if not service.running():
                    print(f"make run: {service.name} exited:\n{service.log_tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except _Stop as stop:
        print(f"\n{stop}: stopping the operator and the participants ...", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        # All at once (SIGTERM to each, SIGKILL to what is left after 10 s): one by one takes four times as long.
        procs.terminate([s.record for s in services(world) if s.record is not None], run_dir=run_dir, timeout=10.0)
        for handle in logs.values():
            handle.close()
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopped; nothing left running", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
