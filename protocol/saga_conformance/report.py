"""Verdicts of the rules and the table the kit prints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Verdict:
    rule: str
    status: Status
    detail: str = ""
    seconds: float = 0.0


def passed(rule: str, detail: str = "") -> Verdict:
    return Verdict(rule, Status.PASS, detail)


def failed(rule: str, detail: str) -> Verdict:
    return Verdict(rule, Status.FAIL, detail)


def not_tested(rule: str, why: str) -> Verdict:
    return Verdict(rule, Status.NOT_TESTED, why)


def table(verdicts: list[Verdict]) -> str:
    """A Markdown table: it reads in a terminal and pastes into an issue."""
    width = max((len(v.rule) for v in verdicts), default=4)
    lines = [
        f"| {'rule'.ljust(width)} | result     | seconds | detail |",
        f"| {'-' * width} | ---------- | ------- | ------ |",
    ]
    for v in verdicts:
        detail = v.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {v.rule.ljust(width)} | {v.status.value.upper().ljust(10)} | {v.seconds:7.1f} | {detail} |")
    return "\n".join(lines)


def summary(verdicts: list[Verdict]) -> str:
    count = {status: sum(v.status is status for v in verdicts) for status in Status}
    return (
        f"saga-conformance: {count[Status.PASS]} rules passed, {count[Status.FAIL]} failed, "
        f"{count[Status.NOT_TESTED]} not tested"
    )


def to_json(verdicts: list[Verdict]) -> str:
    return json.dumps([{**asdict(v), "status": v.status.value} for v in verdicts], indent=2) + "\n"
