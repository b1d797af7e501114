"""Builders and a small driver for the tests of the pure saga core (no I/O, no clock).

`Saga` keeps a spec and the last status and applies events at a fake time; the helpers build specs,
replies and pick effects out of a transition's result, so that each test reads as the rule it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from saga_operator.domain.events import (
    AbortRequested,
    Effect,
    EmitEvent,
    Event,
    ReplyIgnored,
    ReplyReceived,
    Resumed,
    RetryRequested,
    SendCommand,
    Start,
    Tick,
)
from saga_operator.domain.model import RetryPolicy, SagaSpec, SagaStatus, StepSpec, StepState, StepStatus
from saga_operator.domain.transition import transition
from saga_protocol import CommandKind, ErrorInfo, Outcome, Reply, command_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SAGA_UID = "0b4f6c1e-saga"
ACTION = CommandKind.ACTION
COMPENSATION = CommandKind.COMPENSATION
_NO_COMPENSATION = object()


def at(seconds: float) -> datetime:
    """The fake clock: `seconds` after the saga started."""
    return T0 + timedelta(seconds=seconds)


def step(
    name: str,
    *,
    compensation: str | object | None = _NO_COMPENSATION,
    depends_on: list[str] | None = None,
    timeout: int = 10,
    retries: int = 2,
    backoff: int = 1,
    max_backoff: int = 60,
    input: dict[str, Any] | None = None,
) -> StepSpec:
    """A step on participant `<name>-svc`, action `do-<name>`, compensation `undo-<name>` (or the one given)."""
    return StepSpec(
        name=name,
        participant=f"{name}-svc",
        action=f"do-{name}",
        compensation=f"undo-{name}" if compensation is _NO_COMPENSATION else compensation,
        depends_on=depends_on,
        timeout_seconds=timeout,
        retry=RetryPolicy(limit=retries, backoff_seconds=backoff, max_backoff_seconds=max_backoff),
        input=input,
    )


def pivot(name: str, **kwargs: Any) -> StepSpec:
    """A step without compensation: allowed only as the last one."""
    return step(name, compensation=None, **kwargs)


def saga_spec(*steps: StepSpec, compensation_attempt_limit: int = 20) -> SagaSpec:
    return SagaSpec(steps=list(steps), compensation_attempt_limit=compensation_attempt_limit)


def reply(
    spec: SagaSpec,
    name: str,
    outcome: Outcome = Outcome.SUCCEEDED,
    *,
    kind: CommandKind = ACTION,
    attempt: int = 1,
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    duplicate: bool = False,
    now: datetime = T0,
) -> Reply:
    """The reply a participant sends for `name` (the participant named in the spec when there is one)."""
    participant = next((s.participant for s in spec.steps if s.name == name), "nobody")
    error = None
    if outcome != Outcome.SUCCEEDED:
        error = ErrorInfo(reason=reason or ("InsufficientFunds" if outcome == Outcome.FAILED else "Unavailable"))
    if outcome == Outcome.SUCCEEDED and result is None and kind == ACTION:
        result = {"done": name}
    return Reply(
        message_id=f"{name}-{kind.value}-{attempt}-{outcome.value}",
        saga_uid=SAGA_UID,
        step=name,
        kind=kind,
        attempt=attempt,
        idempotency_key=f"{SAGA_UID}/{name}",
        command_id=command_id(SAGA_UID, name, kind, attempt),
        participant=participant,
        outcome=outcome,
        result=result if outcome == Outcome.SUCCEEDED else None,
        error=error,
        duplicate=duplicate,
        sent_at=now,
    )


def sends(effects: Sequence[Effect]) -> list[tuple[str, CommandKind, int]]:
    """The commands among `effects` as (step, kind, attempt), in order."""
    return [(e.step, e.kind, e.attempt) for e in effects if isinstance(e, SendCommand)]


def events(effects: Sequence[Effect]) -> list[tuple[str, str]]:
    """The Kubernetes events among `effects` as (type, reason), in order."""
    return [(e.type, e.reason) for e in effects if isinstance(e, EmitEvent)]


def ignored(effects: Sequence[Effect]) -> list[ReplyIgnored]:
    return [e for e in effects if isinstance(e, ReplyIgnored)]


def states(status: SagaStatus) -> dict[str, StepState]:
    return {record.name: record.state for record in status.steps}


def condition(status: SagaStatus, type_: str) -> str | None:
    found = [c for c in status.conditions if c.type == type_]
    assert len(found) <= 1, f"condition {type_} appears {len(found)} times"
    return found[0].status.value if found else None


class Saga:
    """One saga driven by hand: every `apply` checks the seq rule and that the input was not mutated."""

    def __init__(self, spec: SagaSpec, status: SagaStatus | None = None) -> None:
        self.spec = spec
        self.status = status if status is not None else SagaStatus()
        self.now = T0
        self.writes = 0
        self.effects: list[Effect] = []

    # ---- applying events --------------------------------------------------------------------

    def apply(self, event: Event) -> list[Effect]:
        before = self.status
        frozen = before.model_dump()
        new, effects = transition(self.spec, before, event, uid=SAGA_UID)
        assert before.model_dump() == frozen, "transition mutated its input status"
        if new.model_copy(update={"seq": before.seq}) == before:
            assert new.seq == before.seq, "seq moved although nothing changed"
        else:
            assert new.seq == before.seq + 1, "a changed status must bump seq by one"
            self.writes += 1
        self.status = new
        self.effects = list(effects)
        return self.effects

    def at(self, seconds: float) -> datetime:
        self.now = at(seconds)
        return self.now

    def start(self) -> list[Effect]:
        return self.apply(Start(self.now))

    def reply(self, name: str, outcome: Outcome = Outcome.SUCCEEDED, **kwargs: Any) -> list[Effect]:
        return self.apply(ReplyReceived(reply(self.spec, name, outcome, now=self.now, **kwargs), self.now))

    def succeed(self, *names: str, attempt: int = 1) -> list[Effect]:
        effects: list[Effect] = []
        for name in names:
            effects = self.reply(name, attempt=attempt)
        return effects

    def compensated(self, *names: str, attempt: int = 1) -> list[Effect]:
        effects: list[Effect] = []
        for name in names:
            effects = self.reply(name, kind=COMPENSATION, attempt=attempt)
        return effects

    def tick(self, seconds: float | None = None) -> list[Effect]:
        if seconds is not None:
            self.at(seconds)
        return self.apply(Tick(self.now))

    def abort(self, reason: str = "AbortRequested") -> list[Effect]:
        return self.apply(AbortRequested(self.now, reason))

    def retry(self, token: str) -> list[Effect]:
        return self.apply(RetryRequested(token, self.now))

    def resume(self) -> list[Effect]:
        return self.apply(Resumed(self.now))

    # ---- reading the status -----------------------------------------------------------------

    def record(self, name: str) -> StepStatus:
        found = self.status.step(name)
        assert found is not None
        return found

    @property
    def states(self) -> dict[str, StepState]:
        return states(self.status)
