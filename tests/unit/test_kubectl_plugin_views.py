"""`kubectl saga`'s pure parts: the timeline, `why`, the list (saga_kubectl.timeline, .why, .cli's renderers)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from saga_kubectl import timeline, why
from saga_kubectl.cli import parser, render_describe, render_list, render_why
from saga_operator.domain import integrity
from saga_operator.domain.model import ErrorRecord, Phase, SagaSpec, SagaStatus, StepSpec, StepState, StepStatus

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


SPEC = SagaSpec(
    steps=[
        StepSpec(name="a", participant="pa", action="do", compensation="undo"),
        StepSpec(name="b", participant="pb", action="do", compensation="undo"),
        StepSpec(name="c", participant="pc", action="do", compensation="undo"),
    ]
)


def compensated() -> SagaStatus:
    """a and b succeeded (b after two attempts), c refused at 6 s, b then a compensated by 8 s."""
    return SagaStatus(
        phase=Phase.COMPENSATED,
        started_at=T0,
        finished_at=at(8),
        undoing=True,
        progress="2/3 done, 2 undone",
        message="step c refused: NoWay",
        steps=[
            StepStatus(
                name="a", state=StepState.COMPENSATED, attempt=1, compensation_attempt=1, dispatched_at=T0,
                compensation_dispatched_at=at(7),
                finished_at=at(2), compensated_at=at(8), result={"ok": 1},
            ),
            StepStatus(
                name="b", state=StepState.COMPENSATED, attempt=2, compensation_attempt=1, dispatched_at=at(3),
                compensation_dispatched_at=at(6),
                finished_at=at(4), compensated_at=at(7), result={"ok": 2},
            ),
            StepStatus(
                name="c", state=StepState.REFUSED, attempt=1, dispatched_at=at(4), finished_at=at(6),
                error=ErrorRecord(reason="NoWay", message="not today"),
            ),
        ],
    )  # fmt: skip


def test_bars_follow_the_log() -> None:
    bars = {b.name: b for b in timeline.step_bars(SPEC, compensated(), at(100))}
    a, b, c = bars["a"], bars["b"], bars["c"]
    assert a.action is not None and (a.action.start, a.action.end, a.action.mark) == (T0, at(2), ">")
    # b's dispatchedAt is its second attempt's: its action started when a succeeded, and was retried at 3 s.
    assert b.action is not None and (b.action.start, b.action.end, b.action.retry_at) == (at(2), at(4), at(3))
    assert c.action is not None and (c.action.start, c.action.mark) == (at(4), "X") and c.undo is None
    assert b.undo is not None and (b.undo.start, b.undo.end, b.undo.mark) == (at(6), at(7), "<")
    assert a.undo is not None and (a.undo.start, a.undo.end) == (at(7), at(8))
    assert c.error == "NoWay: not today"


def test_the_drawing_puts_each_bar_where_its_times_are() -> None:
    lines = timeline.render(SPEC, compensated(), at(100), width=33)  # 32 cells for 8 s: 4 per second
    axis = next(line for line in lines if line.strip().startswith("+"))
    col = axis.index("+")
    cells = {
        (line[:col].split() or ["?"])[-1] + ":" + (line[:col].split() or ["?"])[0]: line[col : col + 33]
        for line in lines
        if len(line) > col and line[:col].strip()
    }
    assert cells["action:a"].rstrip() == "=" * 8 + ">"
    assert cells["action:b"].rstrip() == " " * 8 + "====*===>"  # its second attempt went out at 3 s
    assert cells["action:c"].rstrip() == " " * 16 + "=" * 8 + "X"
    undos = [line[col : col + 33].rstrip() for line in lines if line[:col].split() == ["undo"]]
    assert undos == [" " * 28 + "----<", " " * 24 + "----<"]  # a's, then b's: b was undone first
    assert lines[0].split()[1:] == ["0s", "4.0s", "8.0s"]
    assert "error: NoWay: not today" in "\n".join(lines)
    assert timeline.LEGEND[0] in lines


def test_a_running_step_and_a_stuck_compensation() -> None:
    status = compensated()
    status.phase = Phase.FAILED
    status.reason = "CompensationStuck"
    status.steps[0] = StepStatus(
        name="a", state=StepState.COMPENSATING, attempt=1, compensation_attempt=3, dispatched_at=T0,
        compensation_dispatched_at=at(7.5),
        finished_at=at(2), result={"ok": 1}, error=ErrorRecord(reason="Timeout"),
    )  # fmt: skip
    bars = {b.name: b for b in timeline.step_bars(SPEC, status, at(100))}
    undo = bars["a"].undo
    assert undo is not None and (undo.start, undo.end, undo.mark, undo.retry_at) == (at(7), at(8), "!", at(7.5))
    running = SagaStatus(
        phase=Phase.RUNNING,
        started_at=T0,
        steps=[
            StepStatus(
                name="a", state=StepState.RETRYING, attempt=2, dispatched_at=at(3), error=ErrorRecord(reason="Timeout")
            ),
            StepStatus(name="b"),
            StepStatus(name="c"),
        ],
    )
    a = timeline.step_bars(SPEC, running, at(5))[0].action
    assert a is not None and (a.start, a.end, a.mark, a.retry_at) == (T0, at(5), "~", at(3))


def test_a_step_given_up_is_compensated_from_the_moment_it_gave_up() -> None:
    status = SagaStatus(
        phase=Phase.FAILED,
        reason="CompensationStuck",
        started_at=T0,
        finished_at=at(6),
        undoing=True,
        steps=[
            StepStatus(
                name="a", state=StepState.COMPENSATING, attempt=2, compensation_attempt=2, dispatched_at=at(1),
                compensation_dispatched_at=at(5),
                finished_at=at(3), error=ErrorRecord(reason="Timeout"),
            ),
            StepStatus(name="b", state=StepState.SKIPPED),
            StepStatus(name="c", state=StepState.SKIPPED),
        ],
    )  # fmt: skip
    a = timeline.step_bars(SPEC, status, at(100))[0]
    assert a.action is not None and (a.action.start, a.action.end, a.action.mark) == (T0, at(3), "?")
    assert a.undo is not None and (a.undo.start, a.undo.end, a.undo.mark, a.undo.retry_at) == (at(3), at(6), "!", at(5))


def saga(status: SagaStatus, name: str = "s1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": SPEC.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": status.to_patch(),
    }


def test_list_and_describe_and_why() -> None:
    running = SagaStatus(phase=Phase.RUNNING, started_at=T0, steps=[StepStatus(name=n) for n in "abc"])
    table = render_list([saga(compensated()), saga(running, "s2")], at(75), all_namespaces=True)
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "STEP", "PROGRESS", "DURATION", "REASON", "AGE"]
    assert re.split(r"\s{2,}", lines[1]) == ["ns", "s1", "Compensated", "2/3 done, 2 undone", "8.0s", "1m15s"]
    # A running saga's duration is counted to now.
    assert re.split(r"\s{2,}", lines[2]) == ["ns", "s2", "Running", "0/3 done", "1m15s", "1m15s"]
    out = render_describe(saga(compensated()), at(100))
    assert out.splitlines()[:3] == [
        "Saga ns/s1",
        "  phase Compensated, ran 8.0s, 2/3 done, 2 undone",
        "  step c refused: NoWay",
    ]
    assert "docs/operations.md#watching-sagas" in out
    assert (
        render_why(saga(compensated())).splitlines()[0]
        == "s1 was undone because step c refused: NoWay; progress 2/3 done, 2 undone."
    )
    assert render_list([], T0) == "No sagas found."


def test_why_for_a_failed_saga_names_the_reason_and_the_section() -> None:
    status = SagaStatus(
        phase=Phase.FAILED, reason="CompensationStuck", message="CompensationStuck: compensation of step a ..."
    )
    answer = why.explain("s1", status)
    assert answer.cause == "s1 is Failed (CompensationStuck): compensation of step a ..."
    assert "kubectl saga retry NAME" in answer.todo
    assert answer.link == "docs/operations.md#phase-failed-reason-compensationstuck"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_reason_the_operator_writes_has_advice_and_every_link_a_section() -> None:
    written = {value for name, value in vars(integrity).items() if name.isupper() and isinstance(value, str)}
    written |= {"CompensationStuck", "PivotOutcomeUnknown"}  # transition._fail's own
    assert written <= set(why.REASONS), sorted(written - set(why.REASONS))
    anchors = github_anchors((REPO / "docs" / "operations.md").read_text())
    used = {advice.anchor for advice in why.REASONS.values()}
    used |= {"watching-sagas", "a-stuck-saga", "phase-compensating-for-a-long-time", "health-and-metrics"}
    assert used <= anchors, sorted(used - anchors)


@pytest.mark.parametrize("argv", [["list", "-n", "x"], ["-n", "x", "list"], ["describe", "s", "--namespace", "x"]])
def test_the_namespace_goes_before_or_after_the_command(argv: list[str]) -> None:
    assert parser().parse_args(argv).namespace == "x"
