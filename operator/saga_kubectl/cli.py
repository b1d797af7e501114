"""`kubectl saga`: list, describe, abort, retry and why, for saga-operator's Sagas.

Installed as the console script `kubectl-saga`, so that kubectl finds it on PATH as a plugin
(`kubectl saga list`). docs/operations.md, "The kubectl saga plugin".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from saga_kubectl import timeline, why
from saga_kubectl.cluster import Cluster, PluginError
from saga_operator.domain import integrity
from saga_operator.domain.model import TERMINAL_PHASES, Phase, SagaSpec, SagaStatus
from saga_operator.domain.summary import duration, human_duration, progress


def _options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the namespace (default: the context's)")
    common.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="the kubeconfig file (default: KUBECONFIG)")
    return common


def parser() -> argparse.ArgumentParser:
    common = _options()
    top = argparse.ArgumentParser(
        prog="kubectl saga", description="Sagas of saga-operator, at a glance.", parents=[common]
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser(
        "list", parents=[common], help="the sagas: phase, step, progress, duration, reason", aliases=["ls"]
    )
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    listing.add_argument("-l", "--selector", help="a label selector, as kubectl's")
    describe = commands.add_parser("describe", parents=[common], help="a saga's steps as a timeline")
    describe.add_argument("name")
    describe.add_argument("--width", type=int, default=48, help="columns of the time axis (default 48)")
    abort = commands.add_parser("abort", parents=[common], help="stop a saga: its completed steps are compensated")
    abort.add_argument("name")
    retry = commands.add_parser("retry", parents=[common], help="another round of attempts for a Failed saga")
    retry.add_argument("name")
    explain = commands.add_parser("why", parents=[common], help="why a saga is where it is, and what to do")
    explain.add_argument("name")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cluster = Cluster.connect(
            getattr(args, "kubeconfig", None), getattr(args, "context", None), getattr(args, "namespace", None)
        )
        now = datetime.now(UTC)
        match args.command:
            case "list" | "ls":
                print(render_list(cluster.sagas(args.all_namespaces, args.selector), now, args.all_namespaces))
            case "describe":
                saga = cluster.get(args.name)
                print(render_describe(saga, now, width=args.width, events=cluster.events(saga)))
            case "abort":
                return _abort(cluster, args.name)
            case "retry":
                return _retry(cluster, args.name)
            case "why":
                print(render_why(cluster.get(args.name)))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


# ---- reading a Saga -------------------------------------------------------------------------------


def _status(saga: dict[str, Any]) -> tuple[SagaStatus | None, str | None]:
    return integrity.parse_status(saga.get("status"))


def _spec(saga: dict[str, Any]) -> SagaSpec | None:
    try:
        return SagaSpec.model_validate(saga.get("spec") or {})
    except ValidationError:
        return None


def _age(saga: dict[str, Any], now: datetime) -> str:
    created = saga["metadata"].get("creationTimestamp")
    if not created:
        return ""
    return human_duration((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render_list(sagas: list[dict[str, Any]], now: datetime, all_namespaces: bool = False) -> str:
    """One line per saga: NAME PHASE STEP PROGRESS DURATION REASON AGE (NAMESPACE first with -A). The duration of
    a running saga is counted to now, not to its latest write."""
    if not sagas:
        return "No sagas found."
    header = ["NAME", "PHASE", "STEP", "PROGRESS", "DURATION", "REASON", "AGE"]
    rows = [(["NAMESPACE"] if all_namespaces else []) + header]
    for saga in sorted(sagas, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])):
        status, _ = _status(saga)
        meta = saga["metadata"]
        if status is None:
            cells = [meta["name"], "?", "", "", "", "UnreadableStatus", _age(saga, now)]
        else:
            cells = [
                meta["name"],
                status.phase.value,
                status.current_step or "",
                progress(status) or "",
                duration(status, now) or "",
                status.reason or "",
                _age(saga, now),
            ]
        rows.append(([meta.get("namespace", "")] if all_namespaces else []) + cells)
    return _table(rows)


def render_describe(saga: dict[str, Any], now: datetime, *, width: int = 48, events: list[Any] | None = None) -> str:
    meta = saga["metadata"]
    status, problem = _status(saga)
    spec = _spec(saga)
    lines = [f"Saga {meta.get('namespace', '')}/{meta['name']}"]
    if status is None or spec is None:
        lines.append(f"  cannot draw it: {problem or 'the spec does not parse'}")
        return "\n".join(lines)
    took = duration(status, now)
    head = f"  phase {status.phase.value}"
    if status.reason:
        head += f" ({status.reason})"
    if took:
        head += f", {'ran' if status.phase in TERMINAL_PHASES else 'running for'} {took}"
    if status.progress or progress(status):
        head += f", {progress(status)}"
    lines.append(head)
    if status.message:
        lines.append(f"  {status.message}")
    lines.append("")
    if not status.steps:
        lines.append("  no step has run.")
    else:
        lines += timeline.render(spec, status, now, width=width)
    if events:
        lines += ["", "Events (oldest first):"]
        for event in events[-12:]:
            count = f" (x{event.count})" if event.count and event.count > 1 else ""
            lines.append(f"  {event.type:<8} {event.reason:<20} {event.message}{count}")
    explanation = why.explain(meta["name"], status)
    lines += ["", f"Why: {explanation.cause}", f"  what to do: {explanation.todo} ({explanation.link})"]
    return "\n".join(lines)


def render_why(saga: dict[str, Any]) -> str:
    name = saga["metadata"]["name"]
    status, problem = _status(saga)
    if status is None:
        explanation = why.Why(
            f"{name}'s status cannot be read ({problem}).",
            why.REASONS[integrity.CORRUPT_STATUS].todo,
            "sagas-the-operator-will-not-run",
        )
    else:
        explanation = why.explain(name, status)
    return f"{explanation.cause}\nWhat to do: {explanation.todo}.\nSee {explanation.link}"


# ---- acting on a Saga -----------------------------------------------------------------------------


def _abort(cluster: Cluster, name: str) -> int:
    saga = cluster.get(name)
    status, _ = _status(saga)
    if status is not None and status.phase in TERMINAL_PHASES and status.phase != Phase.FAILED:
        print(
            f"error: saga {name} has already finished ({status.phase.value}): an abort changes nothing", file=sys.stderr
        )
        return 1
    if (saga.get("spec") or {}).get("abort") is True:
        print(f"saga {name}: abort was already requested")
        return 0
    cluster.abort(name)
    print(f"saga {name}: abort requested; its completed steps are compensated in reverse order")
    return 0


def _retry(cluster: Cluster, name: str) -> int:
    saga = cluster.get(name)
    status, _ = _status(saga)
    if status is None or status.phase != Phase.FAILED:
        phase = status.phase.value if status is not None else "unreadable"
        print(f"error: saga {name} is {phase}, not Failed: there is nothing to retry", file=sys.stderr)
        return 1
    if status.reason in integrity.NOT_RETRYABLE:
        print(
            f"error: saga {name} is Failed for {status.reason}: a retry cannot cure it (kubectl saga why {name})",
            file=sys.stderr,
        )
        return 1
    token = str(time.time_ns())
    cluster.retry(name, token)
    print(f"saga {name}: retry {status.retries_granted + 1} requested (saga.dev/retry={token})")
    return 0
