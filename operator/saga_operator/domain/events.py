"""What the transition function reacts to (events) and what it asks the shell to do (effects).

Events carry the time they are applied at: the core never reads a clock, so every path is replayable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from saga_operator.domain.template import SagaTemplateSpec
from saga_protocol import CommandKind, Reply


@dataclass(frozen=True)
class TemplateLookup:
    """What the shell found for a templated saga's templateRef: the template's spec (None: not found, or with
    `error` one that does not parse) and its identity, recorded in the saga's status."""

    spec: SagaTemplateSpec | None
    uid: str = ""
    resource_version: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Start:
    """The operator saw the saga for the first time (its status is empty). `participants`: the ones that exist
    (SAGA_PARTICIPANTS); empty, any name goes. `template`: for a saga with a templateRef, what it names."""

    now: datetime
    participants: frozenset[str] = frozenset()
    template: TemplateLookup | None = None
    #: The shell writes behind (SAGA_STATUS_WRITES=behind): recorded in the status as writtenBehind.
    write_behind: bool = False
    #: The shell found this saga unstarted after its own restart: a predecessor may have started it and lost
    #: the write (possible when that predecessor wrote behind, which an operator now writing strictly cannot
    #: rule out), so it is resumed as from a log written behind, in either mode.
    resumed: bool = False


@dataclass(frozen=True)
class ReplyReceived:
    reply: Reply
    now: datetime


@dataclass(frozen=True)
class Tick:
    """Time has passed: every deadline at or before `now` is due (reply timeouts, ends of backoffs)."""

    now: datetime


@dataclass(frozen=True)
class AbortRequested:
    """`spec.abort` became true, or the saga is being deleted while it still has effects to undo."""

    now: datetime
    reason: str = "AbortRequested"


@dataclass(frozen=True)
class RetryRequested:
    """A person annotated a Failed saga with a new retry token: try the stuck step again."""

    token: str
    now: datetime


@dataclass(frozen=True)
class Resumed:
    """The operator restarted and read this status back: commands in flight are sent again, unchanged."""

    now: datetime


@dataclass(frozen=True)
class CommandRefused:
    """The command for `step` could not be sent and never will be (the producer refused it as too large)."""

    step: str
    kind: CommandKind
    reason: str
    message: str
    now: datetime


@dataclass(frozen=True)
class SpecChanged:
    """The spec has a generation the status has not recorded, and nothing else came of it (a new
    ttlSecondsAfterFinished, an abort answered with an Event): record the generation all the same, so that
    status.observedGeneration and the conditions' say the operator has seen it."""

    now: datetime


Event = Start | ReplyReceived | Tick | AbortRequested | RetryRequested | Resumed | CommandRefused | SpecChanged


@dataclass(frozen=True)
class SendCommand:
    step: str
    participant: str
    action: str
    kind: CommandKind
    attempt: int
    #: The command's messageId: command_id(saga uid, step, kind, attempt), recorded in the step's status.
    command_id: str
    #: The step's evaluated input (None: it declares none): recorded in the status, the same in every send.
    input: dict[str, Any] | None = None
    #: Compensations: the action's recorded result (None: unknown, or none returned).
    action_result: dict[str, Any] | None = None


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ReplyIgnored:
    """A reply that changes nothing. `invalid` ones could never have been a real answer (a step that
    does not exist, an attempt never sent): the shell sets them aside in the dead-letter topic. The
    others are the normal noise of at-least-once delivery (duplicates, late answers) and are counted."""

    reason: str
    invalid: bool
    #: For a person (a dead letter's dlq_detail); empty: the reason says it all.
    detail: str = ""


#: Verdicts that a log behind the stored one gives to a genuine reply (an attempt another replica sent after this
#: one last saw the saga): the shell checks the stored log before it dead-letters a reply for one of them.
STALE_VIEW_REASONS: Final = frozenset({"FutureAttempt", "CompensationNotSent"})


Effect = SendCommand | EmitEvent | ReplyIgnored
