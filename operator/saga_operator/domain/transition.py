"""The saga rules, as one pure function: `transition(spec, status, event, uid=...) -> (status, effects)`.

No I/O and no clock: the shell writes the returned status (compare-and-set) *before* it performs the
effects, so the log always runs ahead of the world. That ordering is what makes recovery a matter of
reading `.status` back: a step recorded as dispatched may or may not have reached its participant, and
re-sending it (same idempotency key) or compensating it are both safe.

Forward: a step starts when the steps it depends on have succeeded (by default the step before it;
the pivot, a step without compensation, starts last). Backward (after a business failure, retries used
up, or an abort): a step is compensated once every step that depends on it is settled, which for
steps in a line is exactly reverse order. Compensations are retried until they succeed; after
`spec.compensationAttemptLimit` attempts the saga is marked Failed for a person, who can grant
another round with the retry annotation.

This module decides *which* `StepEvent` happens to a step; `lifecycle.move` checks that it is a legal
move and writes the step's new state (nothing here assigns a state).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from saga_operator.domain import inputs, integrity, summary
from saga_operator.domain.conditions import derive_conditions, observe_generation
from saga_operator.domain.durability import maybe_dispatched
from saga_operator.domain.events import (
    AbortRequested,
    CommandRefused,
    Effect,
    EmitEvent,
    Event,
    ReplyIgnored,
    ReplyReceived,
    Resumed,
    RetryRequested,
    SendCommand,
    SpecChanged,
    Start,
    TemplateLookup,
    Tick,
)
from saga_operator.domain.lifecycle import IN_FLIGHT, SETTLED, TO_UNDO, IllegalStepMove, StepEvent, move
from saga_operator.domain.model import (
    TERMINAL_PHASES,
    ErrorRecord,
    ExpandedTemplate,
    Phase,
    SagaSpec,
    SagaStatus,
    StepSpec,
    StepState,
    StepStatus,
    effective_spec,
)
from saga_operator.domain.template import expand
from saga_protocol import CommandKind, Outcome, Reply, command_id
from saga_protocol.limits import MAX_SAGA_RESULTS_BYTES, json_size


class _Work:
    """The status being built and the effects collected while applying one event."""

    def __init__(self, spec: SagaSpec, status: SagaStatus, uid: str, name: str = "", namespace: str = "") -> None:
        self.spec = spec
        self.uid = uid
        self.meta = {"name": name, "namespace": namespace, "uid": uid}
        self.status = status
        self.effects: list[Effect] = []
        self.specs = {step.name: step for step in spec.steps}
        self.pivot = spec.steps[-1].name if spec.steps[-1].compensation is None else None

    def record(self, name: str) -> StepStatus:
        found = self.status.step(name)
        assert found is not None, f"status has no record for step {name}"
        return found

    def event(self, warning: bool, reason: str, message: str) -> None:
        self.effects.append(EmitEvent("Warning" if warning else "Normal", reason, message))

    def send_action(self, spec: StepSpec, record: StepStatus, event: StepEvent, now: datetime) -> None:
        """A new attempt of the action: `event` is why (its first, a retry due, a person's retry)."""
        move(record, event)
        record.attempt += 1
        record.dispatched_at = now
        record.deadline = now + timedelta(seconds=spec.timeout_seconds)
        self.command(spec, record, CommandKind.ACTION)

    def send_compensation(self, spec: StepSpec, record: StepStatus, event: StepEvent, now: datetime) -> None:
        """A new attempt of the compensation: `event` is why (its first, a retry due, a person's retry)."""
        assert spec.compensation is not None, "only a step with a compensation is compensated"
        # Dispatched, or (resumed from a log written behind) maybe dispatched unrecorded.
        assert record.attempt > 0 or bool(self.status.resumed_behind), "only a dispatched step is compensated"
        move(record, event)
        record.compensation_attempt += 1
        record.compensation_dispatched_at = now  # dispatched_at keeps the action's time
        record.deadline = now + timedelta(seconds=spec.timeout_seconds)
        self.command(spec, record, CommandKind.COMPENSATION)

    def command(self, spec: StepSpec, record: StepStatus, kind: CommandKind) -> None:
        """The command for the attempt the record holds now (a new one, or a re-send after a restart). The one
        place a command is made: its id, deterministic per (saga, step, kind, attempt), goes into the record
        in the same status write that records the attempt, so a re-send carries the same id."""
        if kind == CommandKind.ACTION:
            action, attempt = spec.action, record.attempt
        else:
            assert spec.compensation is not None
            action, attempt = spec.compensation, record.compensation_attempt
        record.command_id = command_id(self.uid, spec.name, kind, attempt)
        # The input recorded at the first attempt, in every command of the step: one idempotency key, one request.
        action_result = record.result if kind == CommandKind.COMPENSATION else None
        self.effects.append(
            SendCommand(
                spec.name, spec.participant, action, kind, attempt, record.command_id, record.input, action_result
            )
        )

    def evaluate_input(self, spec: StepSpec, record: StepStatus, now: datetime) -> bool:
        """Evaluate the step's declared input before its first attempt and record it. False: it failed, the step
        is Refused (nothing was sent) and the saga is being undone."""
        if spec.input is None:
            return True
        reads = inputs.upstream(self.spec)[spec.name]
        steps = {r.name: {"input": r.input, "result": r.result} for r in self.status.steps if r.name in reads}
        try:
            record.input = inputs.evaluate(
                spec.name, spec.input, payload=self.spec.payload, saga=self.meta, steps=steps
            )
            if _results_size(self.status) > MAX_SAGA_RESULTS_BYTES:
                raise inputs.InputError(
                    inputs.INPUT_TOO_LARGE,
                    f"the inputs and results of this saga would exceed {MAX_SAGA_RESULTS_BYTES} bytes together",
                )
        except inputs.InputError as exc:
            record.input = None
            move(record, StepEvent.INPUT_FAILED)
            record.error = ErrorRecord(reason=exc.reason, message=exc.message)
            record.finished_at = now
            message = f"step {spec.name} failed before it was sent: {_describe(record.error)}"
            self.event(True, exc.reason, message)
            _begin_undo(self, message)
            return False
        return True

    def action_attempts_allowed(self, spec: StepSpec) -> int:
        return (1 + spec.retry.limit) * (1 + self.status.retries_granted)

    def compensation_attempts_allowed(self) -> int:
        return self.spec.compensation_attempt_limit * (1 + self.status.retries_granted)


def transition(
    spec: SagaSpec,
    status: SagaStatus,
    event: Event,
    generation: int | None = None,
    *,
    uid: str,
    name: str = "",
    namespace: str = "",
) -> tuple[SagaStatus, list[Effect]]:
    """Apply one event. Returns the new status (`seq` bumped when it changed) and the effects to
    perform, in order, after that status is durably written.

    `generation` is the `metadata.generation` of `spec`. A changed status records it as its
    observedGeneration and on every condition; an unchanged one is not written, so it records nothing
    (None: keep the generation already recorded). `uid` is the saga's `metadata.uid`: command ids are made of it;
    `uid`, `name` and `namespace` are what step inputs see as `saga`."""
    now = event.now
    original = status
    if spec.template_ref is not None and not spec.steps:
        if status.template is None:
            # Not expanded yet: only its Start does (the shell applies Start before anything else).
            if not (isinstance(event, Start) and status.phase == Phase.PENDING):
                return status, [ReplyIgnored("SagaNotStarted", True)] if isinstance(event, ReplyReceived) else []
            expanded = _expand(spec, event)
            if isinstance(expanded, tuple):
                new = status.model_copy(deep=True)
                reject(new, *expanded, now)
                derive_conditions(new, now)
                observe_generation(new, generation)
                new.seq = status.seq + 1
                message = f"{expanded[1]}; nothing was sent. Fix the manifest and create the saga again"
                return new, [EmitEvent("Warning", expanded[0], message)]
            # Recorded in the write that starts the saga: from now on it runs what its status says.
            status = status.model_copy(update={"template": expanded})
        spec = effective_spec(spec, status)
    work = _Work(spec, status.model_copy(deep=True), uid, name, namespace)
    problem = integrity.mismatch(spec, status)
    if problem is not None:
        # A log that does not match its spec is not acted on: the saga ends, for a person, and nothing is sent.
        # The first verdict on an untrusted log stands (a saga Failed as StatusTampered stays so); a saga Failed
        # for another reason (CompensationStuck) learns the new one.
        settled = status.phase in TERMINAL_PHASES and not (
            status.phase == Phase.FAILED and status.reason not in integrity.NOT_RETRYABLE
        )
        if not settled:
            _fail(work, *problem, now)
        elif isinstance(event, ReplyReceived):
            _ignore(work, "SagaFinished")
        return _finish(work, original, generation, now, event)
    try:
        _dispatch(work, event, now)
    except IllegalStepMove as exc:
        # A bug in the core, or a status whose step states no real run produces: stop before anything is written
        # but this verdict, and send nothing.
        work = _Work(spec, status.model_copy(deep=True), uid, name, namespace)
        _fail(work, integrity.ILLEGAL_STEP_MOVE, f"{exc} (nothing was sent)", now)
    return _finish(work, original, generation, now, event)


def _expand(spec: SagaSpec, event: Start) -> ExpandedTemplate | tuple[str, str]:
    assert spec.template_ref is not None
    lookup = event.template or TemplateLookup(None)
    return expand(
        spec.template_ref,
        lookup.spec,
        spec.payload,
        uid=lookup.uid,
        resource_version=lookup.resource_version,
        error=lookup.error,
    )


def _dispatch(work: _Work, event: Event, now: datetime) -> None:
    match event:
        case Start(participants=participants, write_behind=write_behind, resumed=resumed):
            _start(work, now, participants, write_behind=write_behind, resumed=resumed)
        case Resumed():
            _start(work, now)
            _resume_behind(work)
            _resend_in_flight(work)
        case ReplyReceived(reply=reply):
            _apply_reply(work, reply, now)
        case Tick():
            _apply_deadlines(work, now)
        case AbortRequested(reason=reason):
            _abort(work, reason, now)
        case RetryRequested(token=token):
            _retry(work, token, now)
        case CommandRefused():
            _command_refused(work, event, now)
        case SpecChanged():
            pass  # recorded by _finish
    if work.status.phase not in TERMINAL_PHASES and work.status.phase != Phase.PENDING:
        _advance(work, now)


def _finish(
    work: _Work, status: SagaStatus, generation: int | None, now: datetime, event: Event
) -> tuple[SagaStatus, list[Effect]]:
    _derive(work, now)
    new = work.status
    unobserved = (
        isinstance(event, SpecChanged)
        and generation is not None
        and status.phase != Phase.PENDING
        and status.observed_generation != generation
    )
    if new != status or unobserved:
        # Only with a change: a duration moved by the clock alone is not worth a write.
        new.duration = summary.duration(new, now)
        observe_generation(new, generation)
        new.seq = status.seq + 1
    return new, work.effects


def next_deadline(status: SagaStatus) -> datetime | None:
    """When the shell should deliver the next Tick for this saga (None: nothing to wait for)."""
    if status.phase in TERMINAL_PHASES:
        return None
    deadlines = [step.deadline for step in status.steps if step.deadline is not None]
    return min(deadlines, default=None)


def _start(
    work: _Work,
    now: datetime,
    participants: frozenset[str] = frozenset(),
    *,
    write_behind: bool = False,
    resumed: bool = False,
) -> None:
    status = work.status
    if status.phase != Phase.PENDING:
        return
    if write_behind or resumed:
        # In the first status written, whatever the mode of the operator that resumes it. A resumed start may
        # follow a predecessor that wrote behind and lost its first write, so its log may lag in either mode.
        status.written_behind = True
        if resumed:
            status.resumed_behind = True
    problem = integrity.start_problem(work.spec, participants)
    if problem is not None:
        reject(status, *problem, now)
        work.event(True, problem[0], f"{problem[1]}; nothing was sent. Fix the manifest and create the saga again")
        return
    status.steps = [StepStatus(name=step.name) for step in work.spec.steps]
    status.phase = Phase.RUNNING
    status.started_at = now
    status.message = None
    work.event(False, "Started", f"saga started with {_steps(len(work.spec.steps))}")


def _resume_behind(work: _Work) -> None:
    """A log written behind may not show every command sent before the restart: from now on, an undo
    compensates the steps that may have been sent (`maybe_dispatched`) instead of skipping them, and a reply
    to a command the log does not record is ignored (`Unrecorded`), not dead-lettered. Going forward needs
    nothing new: `_advance_forward` sends every step whose prerequisites the log shows succeeded, with the
    attempt (and so the idempotency key and command id) it had."""
    status = work.status
    if status.written_behind and not status.resumed_behind and status.phase not in TERMINAL_PHASES:
        status.resumed_behind = True


def _unsent(work: _Work, reason: str, could_be_unrecorded: bool) -> None:
    """A reply to a command the log does not record: forged or misrouted, unless the log may lag and the command
    is one a lagging log can miss. Only first attempts can be: any later attempt is written ahead (`retry`), and
    so is the undo before any compensation goes out."""
    if work.status.resumed_behind and could_be_unrecorded:
        _ignore(work, "Unrecorded")
    else:
        _ignore(work, reason, invalid=True)


def _resend_in_flight(work: _Work) -> None:
    """After a restart nobody knows whether the last commands left the building: send them again,
    with the same attempt number (and so the same idempotency key and reply correlation)."""
    if work.status.phase in TERMINAL_PHASES:
        return
    for record in work.status.steps:
        spec = work.specs[record.name]
        if record.state == StepState.DISPATCHED and not (work.status.undoing and spec.compensation is not None):
            # (A compensable step still Dispatched while the saga is undone waits for its compensation, not for
            # its answer: only after a restart from a log written behind, while a maybe dispatched step that
            # depends on it is compensated first.)
            work.command(spec, record, CommandKind.ACTION)
        elif record.state == StepState.COMPENSATING and spec.compensation is not None:
            work.command(spec, record, CommandKind.COMPENSATION)


def _ignore(work: _Work, reason: str, invalid: bool = False) -> None:
    work.effects.append(ReplyIgnored(reason, invalid))


def _apply_reply(work: _Work, reply: Reply, now: datetime) -> None:
    if work.status.phase == Phase.PENDING:
        _ignore(work, "SagaNotStarted", invalid=True)
        return
    record = work.status.step(reply.step)
    if record is None:
        _ignore(work, "UnknownStep", invalid=True)
        return
    if reply.kind == CommandKind.ACTION:
        _apply_action_reply(work, work.specs[reply.step], record, reply, now)
    else:
        _apply_compensation_reply(work, work.specs[reply.step], record, reply, now)


def _apply_action_reply(work: _Work, spec: StepSpec, record: StepStatus, reply: Reply, now: datetime) -> None:
    if reply.attempt > record.attempt:
        _unsent(work, "FutureAttempt", could_be_unrecorded=reply.attempt == 1)
        return
    if work.status.phase in TERMINAL_PHASES:
        _ignore(work, "SagaFinished")
        return
    if record.state not in (StepState.DISPATCHED, StepState.RETRYING):
        # Already decided (a replay of the same outcome), or being undone: the compensation wins,
        # whatever this late answer says.
        _ignore(work, "Duplicate" if record.state in (StepState.SUCCEEDED, StepState.REFUSED) else "Late")
        return
    match reply.outcome:
        case Outcome.SUCCEEDED:
            # Any attempt's success is the step's success: every attempt carries the same key.
            move(record, StepEvent.SUCCEED)
            record.result = reply.result
            record.error = None
            record.finished_at = now
            record.deadline = None
            if _results_size(work.status) > MAX_SAGA_RESULTS_BYTES:
                # The step happened, but its result does not fit the saga's log: not recorded, and the saga is
                # undone (the step is compensated like any other that succeeded).
                record.result = None
                record.error = ErrorRecord(
                    reason=integrity.RESULTS_TOO_LARGE,
                    message=f"the results of this saga would exceed {MAX_SAGA_RESULTS_BYTES} bytes together",
                )
                message = f"step {spec.name} failed: {_describe(record.error)}"
                work.event(True, integrity.RESULTS_TOO_LARGE, message)
                _begin_undo(work, message)
        case Outcome.FAILED:
            move(record, StepEvent.REFUSE)
            record.error = _error(reply, "Failed")
            record.finished_at = now
            record.deadline = None
            work.event(True, "StepRefused", f"step {spec.name} refused: {_describe(record.error)}")
            _begin_undo(work, f"step {spec.name} refused: {_describe(record.error)}")
        case Outcome.ERROR:
            if reply.attempt != record.attempt or record.state != StepState.DISPATCHED:
                _ignore(work, "Late")  # an older attempt's transient error says nothing about the latest
                return
            _action_attempt_failed(work, spec, record, _error(reply, "ParticipantError"), now)


def _apply_compensation_reply(work: _Work, spec: StepSpec, record: StepStatus, reply: Reply, now: datetime) -> None:
    if record.compensation_attempt == 0:
        _unsent(work, "CompensationNotSent", could_be_unrecorded=work.status.undoing and reply.attempt == 1)
        return
    if reply.attempt > record.compensation_attempt:
        _ignore(work, "FutureAttempt", invalid=True)  # a compensation's next attempt is written ahead
        return
    if record.state == StepState.COMPENSATED:
        _ignore(work, "Duplicate")
        return
    if work.status.phase in TERMINAL_PHASES or record.state not in (
        StepState.COMPENSATING,
        StepState.COMPENSATION_RETRYING,
    ):
        _ignore(work, "Late")
        return
    if reply.outcome == Outcome.SUCCEEDED:
        move(record, StepEvent.COMPENSATED)
        record.compensated_at = now
        record.deadline = None
        return
    if reply.attempt != record.compensation_attempt or record.state != StepState.COMPENSATING:
        _ignore(work, "Late")
        return
    # Compensations cannot fail for business reasons; a participant that says so has a bug or a
    # dependency down. Either way the only safe move is to try again.
    _compensation_attempt_failed(work, spec, record, _error(reply, "CompensationError"), now)


def _apply_deadlines(work: _Work, now: datetime) -> None:
    if work.status.phase in TERMINAL_PHASES:
        return
    # Timeouts first, then ends of backoff: a timeout may start the undo, and a parallel step whose
    # backoff ends in the same tick must then be compensated, not sent once more (before this, the
    # action's next attempt went out alongside its compensation). Test, in tests/domain/test_domain_rules.py:
    # test_a_timeout_that_starts_the_undo_does_not_send_another_attempt_of_a_parallel_step.
    due = [r for r in work.status.steps if r.deadline is not None and r.deadline <= now]
    due.sort(key=lambda r: r.state not in (StepState.DISPATCHED, StepState.COMPENSATING))
    for record in due:
        if work.status.phase in TERMINAL_PHASES:
            break
        spec = work.specs[record.name]
        match record.state:
            case StepState.DISPATCHED:
                timeout = ErrorRecord(
                    reason="Timeout", message=f"no reply to attempt {record.attempt} in {spec.timeout_seconds}s"
                )
                _action_attempt_failed(work, spec, record, timeout, now)
            case StepState.RETRYING:
                if work.status.undoing and spec.compensation is not None:
                    # Being undone: _advance_backward sends its compensation instead, once the steps that may
                    # depend on it are settled. Its backoff is over and means nothing now: left in place, the
                    # passed deadline would be the saga's next one at every tick, and no time would pass for the
                    # deadlines that do matter (found by the lagging-log world, ModeSwitchingWorld).
                    record.deadline = None
                    continue
                work.send_action(spec, record, StepEvent.RETRY_DUE, now)
            case StepState.COMPENSATING:
                timeout = ErrorRecord(
                    reason="Timeout",
                    message=f"no reply to compensation attempt {record.compensation_attempt} "
                    f"in {spec.timeout_seconds}s",
                )
                _compensation_attempt_failed(work, spec, record, timeout, now)
            case StepState.COMPENSATION_RETRYING:
                work.send_compensation(spec, record, StepEvent.COMPENSATION_RETRY_DUE, now)
            case _:
                record.deadline = None


def _action_attempt_failed(work: _Work, spec: StepSpec, record: StepStatus, error: ErrorRecord, now: datetime) -> None:
    record.error = error
    if record.attempt < work.action_attempts_allowed(spec):
        move(record, StepEvent.ATTEMPT_FAILED)
        record.deadline = now + timedelta(seconds=spec.retry.backoff(record.attempt))
        return
    move(record, StepEvent.GIVE_UP)
    record.deadline = None
    record.finished_at = now
    message = f"step {spec.name} gave up after {_attempts(record.attempt)}: {_describe(error)}"
    if spec.compensation is None:
        # The pivot cannot be undone and its outcome is unknown: only a person can decide.
        _fail(work, "PivotOutcomeUnknown", message + "; the pivot has no compensation", now)
        return
    work.event(True, "StepAbandoned", message)
    _begin_undo(work, message)


def _compensation_attempt_failed(
    work: _Work, spec: StepSpec, record: StepStatus, error: ErrorRecord, now: datetime
) -> None:
    record.error = error
    if record.compensation_attempt < work.compensation_attempts_allowed():
        move(record, StepEvent.COMPENSATION_ATTEMPT_FAILED)
        record.deadline = now + timedelta(seconds=spec.retry.backoff(record.compensation_attempt))
        return
    # No move: a compensation is never given up. The step stays Compensating, with no deadline, until a
    # person grants another round (RetryGranted).
    record.deadline = None
    _fail(
        work,
        "CompensationStuck",
        f"compensation of step {spec.name} did not succeed after {_attempts(record.compensation_attempt)}: "
        f"{_describe(error)}",
        now,
    )


def _results_size(status: SagaStatus) -> int:
    """What the log holds of results and evaluated inputs, together: both count against MAX_SAGA_RESULTS_BYTES."""
    return sum(
        json_size(value) for record in status.steps for value in (record.result, record.input) if value is not None
    )


def _command_refused(work: _Work, event: CommandRefused, now: datetime) -> None:
    """The producer refused a command for good (too large): it never left, and sending it again cannot help."""
    record = work.status.step(event.step)
    if record is None or work.status.phase in TERMINAL_PHASES:
        return
    spec = work.specs[event.step]
    error = ErrorRecord(reason=event.reason, message=event.message)
    message = f"step {spec.name} failed: {_describe(error)}"
    if event.kind == CommandKind.ACTION and record.state == StepState.DISPATCHED:
        move(record, StepEvent.REFUSE)  # nothing reached the participant: nothing to undo for this step
        record.error = error
        record.finished_at = now
        record.deadline = None
        work.event(True, event.reason, message)
        _begin_undo(work, message)
    elif event.kind == CommandKind.COMPENSATION and record.state == StepState.COMPENSATING:
        record.error = error
        record.deadline = None
        _fail(work, event.reason, f"compensation of {message}", now)


def settle(
    status: SagaStatus, phase: Phase, reason: str, message: str, now: datetime, generation: int | None = None
) -> SagaStatus:
    """A copy of `status` ended by the shell's own verdict (a status it cannot trust or cannot write, a spec
    it cannot read): `phase` with `reason`, conditions derived, seq bumped. Nothing is sent for it."""
    new = status.model_copy(deep=True)
    new.phase = phase
    new.reason = reason
    new.message = f"{reason}: {message}"
    new.finished_at = now
    for record in new.steps:
        record.deadline = None
    new.duration = summary.duration(new, now)
    derive_conditions(new, now)
    observe_generation(new, generation)
    new.seq = status.seq + 1
    return new


def reject(status: SagaStatus, reason: str, message: str, now: datetime) -> None:
    """The saga is refused before anything is sent: phase Rejected, nothing to undo."""
    status.phase = Phase.REJECTED
    status.reason = reason
    status.message = f"{reason}: {message}"
    status.finished_at = now


def _fail(work: _Work, reason: str, message: str, now: datetime) -> None:
    status = work.status
    status.phase = Phase.FAILED
    status.reason = reason
    status.finished_at = now
    status.message = f"{reason}: {message}"
    if reason in integrity.NOT_RETRYABLE:
        hint = "nothing more is sent. See docs/operations.md"
    else:
        hint = "See docs/operations.md; annotate saga.dev/retry to try again"
    work.event(True, reason, f"{message}. {hint}")


def _begin_undo(work: _Work, message: str) -> None:
    status = work.status
    if not status.undoing:
        status.undoing = True
        status.message = message


def _abort(work: _Work, reason: str, now: datetime) -> None:
    """An abort (or a deletion). One that cannot change anything says so in an Event (a person's abort only:
    deleting a finished saga needs no word). The shell delivers a person's abort to a saga that is finished or
    already being undone once, when it sees spec.abort turn true."""
    status = work.status
    if status.phase in TERMINAL_PHASES:
        if reason == "AbortRequested":
            work.event(
                False,
                "AbortIgnored",
                f"spec.abort is true but the saga already finished ({_outcome(status)}): there is nothing to abort",
            )
        return
    if status.undoing:
        if reason == "AbortRequested":
            work.event(False, "AbortIgnored", "spec.abort is true; the saga is already being undone")
        return
    if status.phase == Phase.PENDING:
        _start(work, now)
    status.undoing = True
    status.message = f"{reason}: undoing the completed steps"
    work.event(False, reason, "abort requested: compensating the completed steps in reverse order")


def _retry(work: _Work, token: str, now: datetime) -> None:
    status = work.status
    if token == status.retry_token or status.phase == Phase.PENDING:
        return
    status.retry_token = token  # acted on, or answered: either way once per token
    if status.phase != Phase.FAILED:
        work.event(
            False,
            "RetryIgnored",
            f"retry annotation {token!r} ignored: the saga is {_outcome(status)}, and only a Failed saga can be "
            "retried" + ("; set a new value if it fails" if status.phase not in TERMINAL_PHASES else ""),
        )
        return
    if status.reason in integrity.NOT_RETRYABLE:
        work.event(True, "RetryRefused", f"a retry cannot cure {status.reason}: see docs/operations.md")
        return
    status.retries_granted += 1
    status.phase = Phase.COMPENSATING if status.undoing else Phase.RUNNING
    status.reason = None
    status.finished_at = None
    doing = "compensating again" if status.undoing else "sending the stuck step again"
    status.message = f"retry {status.retries_granted} requested: {doing}"
    work.event(False, "RetryRequested", f"a person asked to retry (token {token!r}): {doing}")
    for record in status.steps:
        spec = work.specs[record.name]
        if record.state in (StepState.COMPENSATING, StepState.COMPENSATION_RETRYING):
            work.send_compensation(spec, record, StepEvent.RETRY_GRANTED, now)
        elif record.state == StepState.ABANDONED and spec.compensation is None:
            work.send_action(spec, record, StepEvent.RETRY_GRANTED, now)


def _advance(work: _Work, now: datetime) -> None:
    """Start whatever can start now, forward or backward, and settle the phase. A step whose input fails
    starts the undo in the forward pass: the backward pass then follows in the same event."""
    if not work.status.undoing:
        _advance_forward(work, now)
    if work.status.undoing:
        _advance_backward(work, now)


def _advance_forward(work: _Work, now: datetime) -> None:
    status = work.status
    succeeded = {r.name for r in status.steps if r.state == StepState.SUCCEEDED}
    if len(succeeded) == len(status.steps):
        status.phase = Phase.SUCCEEDED
        status.finished_at = now
        status.message = None
        work.event(False, "Succeeded", f"all {_steps(len(status.steps))} succeeded")
        return
    dependencies = work.spec.dependencies()
    others = {name for name in work.specs if name != work.pivot}
    for record in status.steps:
        if record.state != StepState.PENDING:
            continue
        needs = others if record.name == work.pivot else set(dependencies[record.name])
        if needs <= succeeded:
            spec = work.specs[record.name]
            if not work.evaluate_input(spec, record, now):
                return  # the saga is being undone: nothing more starts
            work.send_action(spec, record, StepEvent.DISPATCH, now)


def _advance_backward(work: _Work, now: datetime) -> None:
    status = work.status
    if status.phase == Phase.RUNNING:
        status.phase = Phase.COMPENSATING
        work.event(False, "CompensationStarted", status.message or "compensating the completed steps")
    # Pending steps that may have been sent before a restart (a log written behind) are undone like the
    # dispatched ones; every other Pending step never started.
    unrecorded = maybe_dispatched(work.spec, status)
    for record in status.steps:
        if record.state == StepState.PENDING and record.name not in unrecorded:
            move(record, StepEvent.SKIP)
    if work.pivot is not None and all(r.state == StepState.SUCCEEDED for r in status.steps):
        # The pivot's answer arrived after an abort: it is too late to undo. Without a pivot every step can be
        # undone, so a saga whose every step succeeded is compensated: the last reply took its results over
        # the saga's budget (ResultsTooLarge; found by the isolation run, docs/chaos.md).
        status.phase = Phase.SUCCEEDED
        status.finished_at = now
        status.message = "the pivot succeeded before the abort could take effect"
        work.event(True, "AbortTooLate", status.message)
        return
    dependents = _dependents(work)
    states = {r.name: r.state for r in status.steps}

    def settled(name: str) -> bool:
        return states[name] in SETTLED and name not in unrecorded

    # Reverse spec order: for steps in a line, the latest first.
    for record in reversed(status.steps):
        spec = work.specs[record.name]
        if spec.compensation is None:
            continue
        if record.state in TO_UNDO:
            why = StepEvent.COMPENSATION_DISPATCH
        elif record.name in unrecorded:
            why = StepEvent.COMPENSATE_UNRECORDED
        else:
            continue
        if all(settled(d) for d in dependents[record.name]):
            work.send_compensation(spec, record, why, now)
            states[record.name] = record.state
            unrecorded.discard(record.name)
    if all(settled(r.name) for r in status.steps):
        status.phase = Phase.COMPENSATED
        status.finished_at = now
        compensated = sum(r.state == StepState.COMPENSATED for r in status.steps)
        if status.retries_granted:
            # The message said what the retry was doing; now it is done.
            status.message = f"saga undone after retry {status.retries_granted}: {_steps(compensated)} compensated"
        work.event(False, "Compensated", f"saga undone: {_steps(compensated)} compensated")


def _dependents(work: _Work) -> dict[str, set[str]]:
    dependents: dict[str, set[str]] = {name: set() for name in work.specs}
    for name, needs in work.spec.dependencies().items():
        if name == work.pivot:
            needs = tuple(n for n in work.specs if n != name)
        for need in needs:
            dependents[need].add(name)
    return dependents


def _derive(work: _Work, now: datetime) -> None:
    """Fields computed from the log, for `kubectl get` and `kubectl wait`."""
    status = work.status
    if status.phase == Phase.PENDING:
        return
    status.progress = summary.progress(status)
    active = [r.name for r in status.steps if r.state in IN_FLIGHT]
    status.current_step = ",".join(active) or None
    derive_conditions(status, now)


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def _outcome(status: SagaStatus) -> str:
    """The phase, with the reason of a Failed or Rejected saga: Succeeded, Failed (CompensationStuck)."""
    return f"{status.phase.value} ({status.reason})" if status.reason else status.phase.value


def _error(reply: Reply, default_reason: str) -> ErrorRecord:
    if reply.error is None:
        return ErrorRecord(reason=default_reason, message="")
    return ErrorRecord(reason=reply.error.reason, message=reply.error.message)


def _describe(error: ErrorRecord | None) -> str:
    if error is None:
        return "no reason given"
    return f"{error.reason}: {error.message}" if error.message else error.reason
