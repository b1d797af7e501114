"""A whole world around the pure core, played by hypothesis: random specs, participants that follow the
participant rules, a network that delays, duplicates, reorders and drops messages, a clock, aborts,
retry annotations and operator crashes. The saga rules are checked after every transition and at the end.

The world, in short:

- the operator is `transition` plus the last status it wrote. A crash replaces it by that status and
  applies `Resumed`; a crash "after write" loses the effects of the transition it interrupted, a crash
  "before write" loses the transition itself (a reply is then delivered again: offsets are committed
  only after the status write);
- one participant per step, with the rules of the participant SDK: idempotent per (idempotency key,
  kind), so an action is applied at most once and a duplicate gets the stored outcome; a compensation
  that arrives before its action leaves a tombstone and the late action is refused (outcome failed); a
  compensation of an action never applied is a no-op success; whether an action fails for business
  reasons is decided once per key; transient errors (outcome error) store nothing;
- after a bounded number of chaos rules, `teardown` delivers everything reliably and moves the clock
  to the next deadline until the saga ends (granting retries to a Failed one, as a person would).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from domain_support import SAGA_UID, T0
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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
from saga_operator.domain.inputs import upstream
from saga_operator.domain.model import (
    TERMINAL_PHASES,
    Phase,
    RetryPolicy,
    SagaSpec,
    SagaStatus,
    StepSpec,
    StepState,
)
from saga_operator.domain.transition import next_deadline, transition
from saga_protocol import CommandKind, ErrorInfo, Outcome, Reply, command_id

ACTION = CommandKind.ACTION
COMPENSATION = CommandKind.COMPENSATION
S = StepState

# Which step states may follow which, within one transition (a step only moves forward).
ALLOWED_NEXT: dict[StepState, set[StepState]] = {
    S.PENDING: {S.PENDING, S.DISPATCHED, S.SKIPPED},
    S.DISPATCHED: {S.DISPATCHED, S.RETRYING, S.SUCCEEDED, S.REFUSED, S.ABANDONED, S.COMPENSATING},
    S.RETRYING: {S.RETRYING, S.DISPATCHED, S.SUCCEEDED, S.REFUSED, S.COMPENSATING},
    S.SUCCEEDED: {S.SUCCEEDED, S.COMPENSATING},
    S.REFUSED: {S.REFUSED},
    S.ABANDONED: {S.ABANDONED, S.COMPENSATING, S.DISPATCHED},  # DISPATCHED: the pivot, on retry
    S.COMPENSATING: {S.COMPENSATING, S.COMPENSATION_RETRYING, S.COMPENSATED},
    S.COMPENSATION_RETRYING: {S.COMPENSATION_RETRYING, S.COMPENSATING, S.COMPENSATED},
    S.COMPENSATED: {S.COMPENSATED},
    S.SKIPPED: {S.SKIPPED},
}


def in_flight(status: SagaStatus) -> list[tuple[str, CommandKind, int]]:
    """The commands a log shows in flight, as (step, kind, attempt): what a resume sends again."""
    if status.phase in TERMINAL_PHASES:
        return []
    found: list[tuple[str, CommandKind, int]] = []
    for record in status.steps:
        if record.state == S.DISPATCHED and not (status.undoing and record.name != status.steps[-1].name):
            found.append((record.name, ACTION, record.attempt))
        elif record.state == S.COMPENSATING:
            found.append((record.name, COMPENSATION, record.compensation_attempt))
    return found


@st.composite
def saga_specs(draw: st.DrawFn) -> SagaSpec:
    """1-5 steps; sometimes a pivot; sometimes explicit dependsOn (parallel branches, joins); some steps with an
    input that reads the payload and the results of the steps they depend on (see `expected_input`)."""
    count = draw(st.integers(1, 5))
    with_pivot = draw(st.booleans())
    dag = draw(st.booleans())  # else the steps run in a line
    steps: list[StepSpec] = []
    for index in range(count):
        earlier = [s.name for s in steps]
        depends_on = None
        if dag and earlier and draw(st.booleans()):
            depends_on = sorted(draw(st.sets(st.sampled_from(earlier))))  # may be empty: a new root
        steps.append(
            StepSpec(
                name=f"s{index}",
                participant=f"p{index}",
                action=f"do-{index}",
                compensation=None if with_pivot and index == count - 1 else f"undo-{index}",
                depends_on=depends_on,
                timeout_seconds=draw(st.integers(1, 5)),
                retry=RetryPolicy(
                    limit=draw(st.integers(0, 2)),
                    backoff_seconds=draw(st.integers(0, 2)),
                    max_backoff_seconds=draw(st.integers(0, 4)),
                ),
            )
        )
    spec = SagaSpec(steps=steps, payload={"n": 7}, compensation_attempt_limit=draw(st.integers(1, 4)))
    reads = upstream(spec)
    for item in spec.steps:
        if draw(st.booleans()):
            item.input = {
                "n": "${payload.n + 1}",
                "saga": "${saga.uid}",
                "from": {need: f"${{steps.{need}.result.by}}" for need in sorted(reads[item.name])},
            }
    return spec


def expected_input(spec: SagaSpec, name: str) -> dict[str, object]:
    """What a step's input must evaluate to: every participant answers {"by": <its name>}."""
    participants = {s.name: s.participant for s in spec.steps}
    return {"n": 8, "saga": SAGA_UID, "from": {need: participants[need] for need in sorted(upstream(spec)[name])}}


class Crash(Enum):
    NONE = "none"
    BEFORE_WRITE = "before-write"
    AFTER_WRITE = "after-write"


CRASHES = st.sampled_from([Crash.NONE, Crash.NONE, Crash.NONE, Crash.NONE, Crash.BEFORE_WRITE, Crash.AFTER_WRITE])
TRANSIENT = st.sampled_from([False, False, False, True])
PICK = st.integers(0, 1_000)


class Held(Enum):
    """What a participant holds under one idempotency key."""

    APPLIED = "applied"  # the action's effect is there
    FAILED = "failed"  # the action was refused for a business reason: nothing applied
    UNDONE = "undone"  # applied, then compensated
    TOMBSTONE = "tombstone"  # compensated before the action arrived: the action will be refused


@dataclass
class Participant:
    step: str
    name: str
    fails: bool  # the business decision for this key
    held: Held | None = None
    action_outcome: Outcome | None = None  # stored, replayed on duplicates
    compensation_done: bool = False
    applied: int = 0
    undone: int = 0
    commands: int = 0

    def handle(self, kind: CommandKind, transient: bool) -> tuple[Outcome, bool, str | None]:
        """(outcome, duplicate, error reason) for one delivered command."""
        self.commands += 1
        if kind == ACTION:
            if self.action_outcome is not None:
                return self.action_outcome, True, None if self.action_outcome == Outcome.SUCCEEDED else "Refused"
            if transient:
                return Outcome.ERROR, False, "Unavailable"
            if self.held == Held.TOMBSTONE:
                self.action_outcome = Outcome.FAILED
                return Outcome.FAILED, False, "CompensatedBeforeAction"
            if self.fails:
                self.held, self.action_outcome = Held.FAILED, Outcome.FAILED
                return Outcome.FAILED, False, "InsufficientFunds"
            self.held, self.action_outcome = Held.APPLIED, Outcome.SUCCEEDED
            self.applied += 1
            assert self.applied == 1, f"participant of {self.step} applied its action twice"
            return Outcome.SUCCEEDED, False, None
        if self.compensation_done:
            return Outcome.SUCCEEDED, True, None
        if transient:
            return Outcome.ERROR, False, "Unavailable"
        self.compensation_done = True
        if self.held == Held.APPLIED:
            self.held = Held.UNDONE
            self.undone += 1
        elif self.held is None:
            self.held = Held.TOMBSTONE
        return Outcome.SUCCEEDED, False, None

    @property
    def effect_outstanding(self) -> bool:
        return self.held == Held.APPLIED


@dataclass(frozen=True)
class Command:
    step: str
    kind: CommandKind
    attempt: int


Message = Command | Reply


@dataclass
class History:
    actions_sent: set[str] = field(default_factory=set)
    compensations_sent: set[str] = field(default_factory=set)
    replies: int = 0
    delivered: list[Reply] = field(default_factory=list)
    restarts: int = 0
    retries: int = 0


class SagaWorld(RuleBasedStateMachine):
    #: Which step states may follow which within one transition (a subclass may allow more).
    allowed_next: dict[StepState, set[StepState]] = ALLOWED_NEXT

    def __init__(self) -> None:
        super().__init__()
        self.spec: SagaSpec
        self.status = SagaStatus()
        self.clock = T0
        self.network: list[Message] = []
        self.participants: dict[str, Participant] = {}
        self.history = History()
        self.tokens = 0
        self.moves = 0
        self.abort_after = 0

    # ---- set-up ---------------------------------------------------------------------------------

    @initialize(
        spec=saga_specs(),
        fails=st.lists(st.integers(0, 3), min_size=5, max_size=5),
        abort_after=st.integers(0, 80),
        crash=CRASHES,
    )
    def start(self, spec: SagaSpec, fails: list[int], abort_after: int, crash: Crash) -> None:
        """`abort_after`: moves before a person may abort (else most sagas would be aborted early on)."""
        self.spec = spec
        self.abort_after = abort_after
        self.pivot = spec.steps[-1].name if spec.steps[-1].compensation is None else None
        self.participants = {
            s.name: Participant(s.name, s.participant, fails=fails[i] == 3) for i, s in enumerate(spec.steps)
        }
        self.dependents = self._transitive_dependents(spec)
        self.operate(self.start_event(), crash)

    def start_event(self) -> Event:
        return Start(self.clock)

    def _transitive_dependents(self, spec: SagaSpec) -> dict[str, set[str]]:
        """Steps that (transitively) need each step; the pivot needs every other step."""
        needs = {name: set(deps) for name, deps in spec.dependencies().items()}
        if self.pivot is not None:
            needs[self.pivot] = {s.name for s in spec.steps if s.name != self.pivot}
        closure: dict[str, set[str]] = {name: set() for name in needs}
        for name, direct in needs.items():
            stack = list(direct)
            while stack:
                need = stack.pop()
                if name not in closure[need]:
                    closure[need].add(name)
                    stack.extend(needs[need])
        return closure

    # ---- the operator -----------------------------------------------------------------------------

    def operate(self, event: Event, crash: Crash = Crash.NONE) -> bool:
        """Apply one event; True when the new status was written."""
        before = self.status
        after, effects = transition(self.spec, before, event, uid=SAGA_UID)
        self.check_transition(event, before, after, effects)
        if crash == Crash.BEFORE_WRITE:
            self.restart()
            return False
        self.status = after
        self.log_sent(effects)
        if crash == Crash.AFTER_WRITE:
            self.restart()
            return True
        self.perform(effects)
        return True

    def restart(self) -> None:
        """The operator comes back, reads the last written status and carries on."""
        self.history.restarts += 1
        before = self.status
        after, effects = transition(self.spec, before, Resumed(self.clock), uid=SAGA_UID)
        self.check_transition(Resumed(self.clock), before, after, effects)
        if before.phase != Phase.PENDING:
            assert after == before, "Resumed changed a written status"
            sent = [(e.step, e.kind, e.attempt) for e in effects if isinstance(e, SendCommand)]
            assert sorted(sent) == sorted(in_flight(before)), "Resumed must re-send exactly the commands in flight"
        self.status = after
        self.log_sent(effects)
        self.perform(effects)

    def log_sent(self, effects: list[Effect]) -> None:
        """Commands of a written transition: sent, as far as anyone can tell (a crash may lose them)."""
        for effect in effects:
            if isinstance(effect, SendCommand):
                sent = self.history.actions_sent if effect.kind == ACTION else self.history.compensations_sent
                sent.add(effect.step)

    def perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendCommand):
                self.network.append(Command(effect.step, effect.kind, effect.attempt))

    # ---- the invariants of one transition ------------------------------------------------------------

    def check_transition(self, event: Event, before: SagaStatus, after: SagaStatus, effects: list[Effect]) -> None:
        unchanged = after.model_copy(update={"seq": before.seq}) == before
        if unchanged:
            assert after.seq == before.seq, "seq moved although the status did not change"
        else:
            assert after.seq == before.seq + 1, "a changed status must bump seq by exactly one"

        if before.phase in (Phase.SUCCEEDED, Phase.COMPENSATED):
            assert unchanged, f"a {before.phase} saga changed"
            assert not [e for e in effects if isinstance(e, SendCommand)], "a finished saga sent a command"
        if before.phase == Phase.FAILED and after.phase != Phase.FAILED:
            assert isinstance(event, RetryRequested) and event.token != before.retry_token
        if isinstance(event, RetryRequested) and event.token == before.retry_token:
            assert unchanged and not effects, "the same retry token acted on twice"

        for old, new in zip(before.steps, after.steps, strict=False):
            assert new.state in self.allowed_next[old.state], f"step {new.name}: {old.state} -> {new.state}"
            # Evaluated once, before the first attempt, and never again: every send of the step carries it.
            if old.input is not None:
                assert new.input == old.input, f"step {new.name}: its recorded input changed"
            if old.result is not None:
                assert new.result == old.result, f"step {new.name}: its recorded result changed"
            assert new.attempt >= old.attempt and new.compensation_attempt >= old.compensation_attempt
        if before.steps:
            assert [r.name for r in after.steps] == [r.name for r in before.steps]

        actions: set[str] = set()
        for effect in effects:
            if isinstance(effect, SendCommand):
                self.check_command(effect, after, actions)
                if effect.kind == ACTION:
                    actions.add(effect.step)
            elif isinstance(effect, ReplyIgnored):
                # Every reply in this world answers a command that was really sent: never "invalid".
                assert not effect.invalid, f"a genuine reply was classified invalid: {effect}"

        if after.phase == Phase.FAILED and before.phase != Phase.FAILED:
            self.check_failure_explained(after, effects)
        if after.phase not in TERMINAL_PHASES and after.phase != Phase.PENDING:
            assert next_deadline(after) is not None, "a running saga with nothing to wait for would hang"

    def check_command(self, command: SendCommand, after: SagaStatus, same_transition: set[str]) -> None:
        """`same_transition`: the steps whose actions this transition sent before this command."""
        spec = next(s for s in self.spec.steps if s.name == command.step)
        record = after.step(command.step)
        assert record is not None
        # The same input in every command of the step: each attempt, each re-send, its compensation.
        assert command.input == record.input
        if spec.input is None or (command.kind == COMPENSATION and record.attempt == 0):
            # No input declared; or the compensation of an action a log written behind never recorded as sent:
            # its input was never evaluated, and the participant undoes by key from its own record.
            assert command.input is None
        else:
            assert command.input == expected_input(self.spec, spec.name), (command.input, spec.input)
        if command.kind == COMPENSATION:
            # A compensation sees its action's result whenever the log has one, and it is the participant's.
            assert command.action_result == record.result
            if record.result is not None:
                assert command.action_result == {"by": spec.participant}
        else:
            assert command.action_result is None
        if command.kind == ACTION:
            assert command.action == spec.action and command.participant == spec.participant
            # The log runs ahead of the world: the attempt is recorded before it is sent.
            assert 1 <= command.attempt <= record.attempt
            assert command.step not in self.history.compensations_sent, "an action sent after its compensation"
            if after.undoing:
                assert command.step == self.pivot, "a new action sent while the saga is being undone"
            return
        assert spec.compensation is not None and command.action == spec.compensation
        assert 1 <= command.attempt <= record.compensation_attempt
        if record.attempt == 0:
            # Only after a restart from a log written behind: the action may have gone out unrecorded.
            assert after.resumed_behind, "a compensation of an action never dispatched"
        else:
            assert command.step in self.history.actions_sent | same_transition, "a compensation of an action never sent"
        # Reverse order: nothing that depends on this step may still hold (or be able to gain) an effect.
        for dependent in self.dependents[command.step]:
            participant = self.participants[dependent]
            if dependent in self.history.actions_sent:
                assert participant.held in (Held.FAILED, Held.UNDONE, Held.TOMBSTONE), (
                    f"compensation of {command.step} sent while {dependent}, which depends on it, "
                    f"holds {participant.held}"
                )

    def check_failure_explained(self, after: SagaStatus, effects: list[Effect]) -> None:
        assert after.message is not None
        reason = after.message.split(":", 1)[0]
        assert ("Warning", reason) in [(e.type, e.reason) for e in effects if isinstance(e, EmitEvent)]
        rounds = 1 + after.retries_granted
        if reason == "CompensationStuck":
            assert any(
                r.state == S.COMPENSATING and r.compensation_attempt == self.spec.compensation_attempt_limit * rounds
                for r in after.steps
            ), "Failed without a compensation at its attempt limit"
        else:
            assert reason == "PivotOutcomeUnknown", f"Failed for an unexpected reason: {after.message}"
            assert self.pivot is not None
            record = after.step(self.pivot)
            spec = self.spec.steps[-1]
            assert record is not None and record.state == S.ABANDONED
            assert record.attempt == (1 + spec.retry.limit) * rounds

    # ---- the world's moves -------------------------------------------------------------------------

    def deliver(self, index: int, transient: bool = False, crash: Crash = Crash.NONE) -> None:
        message = self.network.pop(index)
        if isinstance(message, Command):
            participant = self.participants[message.step]
            outcome, duplicate, reason = participant.handle(message.kind, transient)
            self.network.append(
                Reply(
                    message_id=f"m{self.history.replies}",
                    saga_uid=SAGA_UID,
                    step=message.step,
                    kind=message.kind,
                    attempt=message.attempt,
                    idempotency_key=f"{SAGA_UID}/{message.step}",
                    command_id=command_id(SAGA_UID, message.step, message.kind, message.attempt),
                    participant=participant.name,
                    outcome=outcome,
                    result={"by": participant.name} if outcome == Outcome.SUCCEEDED else None,
                    error=ErrorInfo(reason=reason) if reason else None,
                    duplicate=duplicate,
                    sent_at=self.clock,
                )
            )
            self.history.replies += 1
            return
        self.history.delivered.append(message)
        if crash != Crash.NONE:
            self.network.append(message)  # its offset was not committed: Kafka delivers it again
        self.operate(ReplyReceived(message, self.clock), crash)

    @precondition(lambda self: self.network)
    @rule(pick=PICK, transient=TRANSIENT, crash=CRASHES)
    def deliver_any(self, pick: int, transient: bool, crash: Crash) -> None:
        """Delivery in any order: reordering and delay."""
        self.deliver(pick % len(self.network), transient, crash)

    @precondition(lambda self: self.network)
    @rule(pick=PICK)
    def duplicate(self, pick: int) -> None:
        self.network.append(self.network[pick % len(self.network)])

    @precondition(lambda self: self.network)
    @rule(pick=PICK)
    def drop(self, pick: int) -> None:
        self.network.pop(pick % len(self.network))

    @rule(seconds=st.integers(0, 6), crash=CRASHES)
    def time_passes(self, seconds: int, crash: Crash) -> None:
        self.clock += timedelta(seconds=seconds)
        self.operate(Tick(self.clock), crash)

    @precondition(lambda self: next_deadline(self.status) is not None)
    @rule(crash=CRASHES)
    def next_deadline_passes(self, crash: Crash) -> None:
        due = next_deadline(self.status)
        assert due is not None
        self.clock = max(self.clock, due)
        self.operate(Tick(self.clock), crash)

    @precondition(lambda self: self.moves >= self.abort_after)
    @rule(crash=CRASHES)
    def abort(self, crash: Crash) -> None:
        self.operate(AbortRequested(self.clock), crash)

    @precondition(lambda self: self.status.phase == Phase.FAILED)
    @rule(crash=CRASHES)
    def a_person_retries(self, crash: Crash) -> None:
        self.retry(crash)

    @precondition(lambda self: self.status.retry_token is not None)
    @rule()
    def the_same_retry_token_again(self) -> None:
        assert self.status.retry_token is not None
        self.operate(RetryRequested(self.status.retry_token, self.clock))

    @rule()
    def operator_restarts(self) -> None:
        self.restart()

    def retry(self, crash: Crash = Crash.NONE) -> None:
        self.tokens += 1
        self.history.retries += 1
        self.operate(RetryRequested(f"token-{self.tokens}", self.clock), crash)

    # ---- always ------------------------------------------------------------------------------------

    @invariant()
    def count_moves(self) -> None:
        """Not a check: invariants run after every rule, which makes this the world's move counter."""
        self.moves += 1

    @invariant()
    def nothing_applied_twice(self) -> None:
        for participant in self.participants.values():
            assert participant.applied <= 1 and participant.undone <= participant.applied

    @invariant()
    def conditions_follow_the_phase(self) -> None:
        status = self.status
        if status.phase == Phase.PENDING:
            assert status.conditions == []
            return
        conditions = {c.type: c.status.value for c in status.conditions}
        terminal = status.phase in TERMINAL_PHASES
        assert conditions["Completed"] == ("True" if terminal else "False")
        if status.phase == Phase.SUCCEEDED:
            assert conditions["Succeeded"] == "True"
        else:
            # Unknown until the end, also while compensating (a compensating saga may yet end Succeeded).
            assert conditions["Succeeded"] == ("False" if terminal else "Unknown")

    @invariant()
    def a_succeeded_saga_holds_every_effect(self) -> None:
        if self.status.phase == Phase.SUCCEEDED:
            for record in self.status.steps:
                assert record.state == S.SUCCEEDED
                assert self.participants[record.name].held == Held.APPLIED

    # ---- the end: the network heals, time moves on, and the saga must finish ----------------------------

    def teardown(self) -> None:
        if not hasattr(self, "spec"):
            return
        for _ in range(5_000):
            if self.network:
                self.deliver(0)
            elif self.status.phase == Phase.PENDING:
                self.restart()  # only after a failure in `start`: the shell would see the saga again
            elif self.status.phase == Phase.FAILED:
                assert self.history.retries < 100, "a person keeps retrying a saga that does not move"
                self.retry()
            elif self.status.phase in TERMINAL_PHASES:
                break
            else:
                due = next_deadline(self.status)
                assert due is not None, f"saga stuck in {self.status.phase} with nothing to wait for"
                self.clock = max(self.clock, due)
                self.operate(Tick(self.clock))
        else:
            raise AssertionError(f"the saga did not finish: {self.status.phase}")
        self.check_outcome()
        self.check_the_end_is_the_end()

    def check_the_end_is_the_end(self) -> None:
        """Nothing moves a Succeeded or Compensated saga: replays of every reply, aborts, ticks, restarts. An abort
        or a retry is answered with an Event saying why nothing happens; the retry's token is recorded (once)."""
        final = self.status
        far = self.clock + timedelta(days=1)
        replays: list[Event] = [
            *(ReplyReceived(reply, far) for reply in self.history.delivered),
            AbortRequested(far),
            Tick(far),
            Resumed(far),
            RetryRequested("one-more", far),
        ]
        for event in replays:
            after, effects = transition(self.spec, final, event, uid=SAGA_UID)
            answered = {AbortRequested: "AbortIgnored", RetryRequested: "RetryIgnored"}.get(type(event))
            if isinstance(event, RetryRequested):
                assert after.retry_token == event.token
                after = after.model_copy(update={"retry_token": final.retry_token, "seq": final.seq})
            assert after == final, f"{event} changed a finished saga"
            if answered is not None:
                assert [(e.type, e.reason) for e in effects if isinstance(e, EmitEvent)] == [("Normal", answered)]
                effects = [e for e in effects if not isinstance(e, EmitEvent)]
            assert all(isinstance(e, ReplyIgnored) and not e.invalid for e in effects), (event, effects)

    def check_outcome(self) -> None:
        status, participants = self.status, self.participants
        if status.phase == Phase.SUCCEEDED:
            for name, participant in participants.items():
                assert participant.held == Held.APPLIED and participant.applied == 1, (name, participant)
                assert participant.undone == 0
        else:
            assert status.phase == Phase.COMPENSATED
            outstanding = [name for name, p in participants.items() if p.effect_outstanding]
            assert not outstanding, f"Compensated, but effects remain at {outstanding}"
        for record in status.steps:
            participant = participants[record.name]
            if record.state == S.SKIPPED:
                assert participant.commands == 0 and record.name not in self.history.actions_sent
            elif record.state == S.REFUSED:
                assert participant.held == Held.FAILED, record.name
            elif record.state == S.COMPENSATED:
                assert participant.held in (Held.UNDONE, Held.TOMBSTONE, Held.FAILED), record.name
            else:
                assert record.state == S.SUCCEEDED, f"{record.name} ended {record.state}"


# About 10 s on 2 cores. A failure's shrinking can take minutes: that is the price of a minimal example.
def world_settings(max_examples: int) -> settings:
    """The settings of every saga world: runs of 40 moves, no deadline (a world's example runs long)."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


SagaWorld.TestCase.settings = world_settings(300)
test_saga_world = SagaWorld.TestCase
