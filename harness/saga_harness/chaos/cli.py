"""`make chaos`: many buy-video sagas while everything breaks, then an audit of the books.

The command line around `run_chaos` (`python -m saga_harness.chaos --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from saga_testenv.stack import Stack, StackEndpoints

from .plan import ChaosConfig
from .report import format_report
from .run import ChaosError, _say, run_chaos
from .storm import Log


@contextlib.contextmanager
def _stack_for(stack_dir: Path | None, work: Path, log: Log) -> Iterator[StackEndpoints]:
    if stack_dir is not None:
        attached = Stack.attach(stack_dir)
        if attached is None:
            raise ChaosError(f"no running stack in {stack_dir} (python -m saga_testenv --dir {stack_dir} up)")
        log(f"== using the stack in {stack_dir}: its Kafka broker is restarted and its API server frozen once")
        yield attached
        return
    log("== starting a stack of its own for the run")
    with Stack(work / "stack", log=lambda m: log(f"  [testenv] {m}")) as stack:
        yield stack


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saga_harness.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300, help="how many sagas (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="the seed of the plan and the faults (default: random)")
    parser.add_argument("--short", action="store_true", help="the short form (40 sagas) that `make test` runs")
    parser.add_argument(
        "--stack-dir", type=Path, default=None, help="use this running stack (default: start one of its own)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs, databases and report.json here")
    parser.add_argument(
        "--operator-path",
        type=Path,
        default=None,
        help="run the operator's package from this folder (a copy of operator/ with a deliberate bug: does the "
        "run catch it?)",
    )
    parser.add_argument(
        "--finish-timeout", type=float, default=900.0, help="seconds for every saga to end once the faults stop"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, choices=(1, 2, 3), help="operator replicas sharing the sagas (default 1)"
    )
    parser.add_argument("--no-kafka-restart", action="store_true")
    parser.add_argument("--no-apiserver-pause", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the world's processes and the stack are stopped on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    # aiokafka logs every refused connection while the broker is down: that is the point of the run.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    config = ChaosConfig(sagas=args.sagas, seed=seed, finish_timeout=args.finish_timeout)
    if args.short:
        config = config.short()
    config = ChaosConfig(**{**asdict(config), "replicas": args.replicas})
    if args.no_kafka_restart or args.no_apiserver_pause:
        config = ChaosConfig(
            **{
                **asdict(config),
                "restart_kafka": config.restart_kafka and not args.no_kafka_restart,
                "apiserver_pause": 0.0 if args.no_apiserver_pause else config.apiserver_pause,
            }
        )
    with contextlib.ExitStack() as cleanup:
        if args.keep is not None:
            work = args.keep.absolute()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="saga-chaos-")))
        try:
            with _stack_for(args.stack_dir, work, _say) as endpoints:
                operator_env = {"PYTHONPATH": str(args.operator_path.absolute())} if args.operator_path else None
                report = run_chaos(config, endpoints, work / "run", operator_env=operator_env)
        except Exception as exc:
            traceback.print_exc()
            print(f"chaos run could not be carried out: {type(exc).__name__}: {exc}", file=sys.stderr)
            _keep_logs(work, args.keep)
            return 2
        print(format_report(report), flush=True)
        if report.ok:
            print("chaos run passed: nothing lost, nothing applied twice, the money balances")
            return 0
        print(f"chaos run FAILED: {len(report.violations)} violation(s)", file=sys.stderr)
        _keep_logs(work, args.keep)
        return 1


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _keep_logs(work: Path, keep: Path | None) -> None:
    """After a failure, the logs and databases outlive the temporary directory."""
    if keep is not None:
        print(f"logs, databases and report.json in {work}", file=sys.stderr)
        return
    kept = Path(tempfile.mkdtemp(prefix="saga-chaos-failed-"))
    if (work / "run").exists():
        shutil.copytree(work / "run", kept / "run", dirs_exist_ok=True)
    print(f"logs, databases and report.json copied to {kept}", file=sys.stderr)
