"""Every reason code of the protocol, once: who uses it, what happens to the message, what it means.

docs/protocol.md carries the table `render_table()` makes (a test keeps the two equal):
`python -m saga_protocol.reasons`. A reason is a CamelCase word; it goes into a dead letter's
`dlq_reason` header, into a reply's `error.reason`, or labels the operator's ignored-replies counter.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final, Literal

Who = Literal["participant", "operator", "both"]
#: dead-lettered: set aside on a DLQ (and counted there, once); ignored: the operator drops the reply and
#: counts it under this reason, once; reply: only ever the `error.reason` of a reply.
Handling = Literal["dead-lettered", "ignored", "reply"]

# A participant's answer to a decodable command it refuses before running anything (nothing stored).
_REFUSED: Final = "action: `failed`; compensation: `error`"


@dataclass(frozen=True)
class Reason:
    code: str
    who: Who
    handling: Handling
    reply: str
    meaning: str


REASONS: Final[tuple[Reason, ...]] = (
    # -- decoding: both sides, before anything else ---------------------------------------------------
    Reason("EmptyMessage", "both", "dead-lettered", "none", "The value is null or zero bytes long."),
    Reason(
        "Undecodable",
        "both",
        "dead-lettered",
        "none",
        "The record cannot be read: its batch does not decompress (unknown codec, corrupt data) or the "
        "client reports it corrupt. Dead-lettered with its offsets (value as read, possibly empty), skipped.",
    ),
    Reason(
        "Oversized",
        "both",
        "dead-lettered",
        "none",
        "The value is over 256 KiB, a command's payload over 64 KiB, or a reply's result over 16 KiB.",
    ),
    Reason(
        "WrongType",
        "both",
        "dead-lettered",
        "none",
        "A `ce_type` header is present and is not this topic's type (a v1 message, a reply on a command topic).",
    ),
    Reason(
        "NotJson",
        "both",
        "dead-lettered",
        "none",
        "The value is not one UTF-8 JSON text (RFC 8259): also NaN or Infinity, a number beyond a double's "
        "range (`1e400`), an unpaired surrogate escape (`\\ud800`), a repeated key, trailing bytes.",
    ),
    Reason("NotAnObject", "both", "dead-lettered", "none", "The value is JSON but not an object."),
    Reason(
        "TooDeep",
        "both",
        "dead-lettered",
        "none",
        "The body nests deeper than 64 levels, a payload or a result deeper than 32.",
    ),
    Reason(
        "SchemaViolation",
        "both",
        "dead-lettered",
        "none",
        "A required field is missing, a known field has the wrong JSON type or is out of range, or a "
        "reply's fields disagree with its outcome (no `error` with failed/error, a `result` without succeeded).",
    ),
    # -- a participant's checks of a decoded command, in this order ---------------------------------------
    Reason(
        "UntrustedReplyTopic",
        "participant",
        "dead-lettered",
        "none, on any topic",
        "The command's `replyTopic` is not the reply topic this participant is configured to trust.",
    ),
    Reason(
        "KeyMismatch",
        "both",
        "dead-lettered",
        _REFUSED,
        "The record's key is not the UTF-8 bytes of its `sagaUid` (per-saga order rests on the key).",
    ),
    Reason(
        "IdempotencyKeyMismatch",
        "both",
        "dead-lettered",
        _REFUSED,
        "`idempotencyKey` is not `<sagaUid>/<step>` (for the operator: not the step's key).",
    ),
    Reason(
        "NamespaceNotAllowed",
        "participant",
        "dead-lettered",
        _REFUSED,
        "The participant is configured with the namespaces allowed to command it; `sagaNamespace` is not one.",
    ),
    Reason(
        "UnknownAction",
        "participant",
        "dead-lettered",
        _REFUSED,
        "The participant has no handler of this kind named `action`.",
    ),
    Reason(
        "ReplyUndeliverable",
        "participant",
        "dead-lettered",
        "none (it could not be sent)",
        "The reply could not be produced within the participant's reply timeout (topic missing, access "
        "denied). The outcome stays stored: a re-send of the command replays it.",
    ),
    # -- what the protocol itself puts in a reply's error -------------------------------------------------
    Reason(
        "AlreadyCompensated",
        "participant",
        "reply",
        "`failed`, stored",
        "The action arrived after its compensation left a tombstone: nothing applied, ever.",
    ),
    Reason(
        "ResultTooLarge",
        "participant",
        "reply",
        "action: `failed`, stored, effect rolled back; compensation: `error`, not stored",
        "The handler returned a result over 16 KiB or 32 levels.",
    ),
    # -- the operator's checks of a decoded reply, in this order --------------------------------------------
    Reason("UnknownSaga", "operator", "dead-lettered", "", "No saga the operator knows has this `sagaUid`."),
    Reason("InvalidSaga", "operator", "dead-lettered", "", "The saga's spec cannot be read, so no step can match."),
    Reason("SagaNotStarted", "operator", "dead-lettered", "", "The saga has not sent any command yet."),
    Reason("UnknownStep", "operator", "dead-lettered", "", "The saga has no step named `step`."),
    Reason(
        "WrongReplyTopic",
        "operator",
        "dead-lettered",
        "",
        "The reply came on another topic than `saga.replies.<the step's participant>`.",
    ),
    Reason("ParticipantMismatch", "operator", "dead-lettered", "", "`participant` is not the step's participant."),
    Reason(
        "CommandIdMismatch",
        "operator",
        "dead-lettered",
        "",
        "`commandId` is not `command_id(sagaUid, step, kind, attempt)` of the reply's own kind and attempt.",
    ),
    Reason(
        "CompensationNotSent",
        "operator",
        "dead-lettered",
        "",
        "A compensation reply for a step whose compensation was never sent.",
    ),
    Reason("FutureAttempt", "operator", "dead-lettered", "", "A reply to an attempt that was not sent yet."),
    Reason(
        "NotApplied",
        "operator",
        "dead-lettered",
        "",
        "The reply passed every check but could not be applied (the saga was deleted meanwhile, a bug).",
    ),
    Reason(
        "Duplicate",
        "operator",
        "ignored",
        "",
        "The step already has its final outcome of this kind (a replay, or another attempt's answer).",
    ),
    Reason("SagaFinished", "operator", "ignored", "", "The saga is in a terminal phase."),
    Reason(
        "Unrecorded",
        "operator",
        "ignored",
        "",
        "After a restart from a log written behind its commands: an answer to a command the log does not "
        "record (CompensationNotSent or FutureAttempt otherwise); the operator sends that command again, with "
        "the same key.",
    ),
    Reason(
        "Late",
        "operator",
        "ignored",
        "",
        "An answer that no longer matters: an older attempt's `error`, or an action's answer while the step "
        "is being compensated.",
    ),
)

BY_CODE: Final = {reason.code: reason for reason in REASONS}
DECODE_REASONS: Final = frozenset(
    {"EmptyMessage", "Undecodable", "Oversized", "WrongType", "NotJson", "NotAnObject", "TooDeep", "SchemaViolation"}
)


def render_table() -> str:
    """The Markdown table of docs/protocol.md's "Reason codes" section."""
    lines = [
        "| Reason | Who | Dead-lettered or ignored | Participant's reply | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in REASONS:
        handling = {"dead-lettered": "dead-lettered", "ignored": "ignored (counted)", "reply": "in a reply only"}
        who = "participant and operator" if r.who == "both" else r.who
        lines.append(f"| `{r.code}` | {who} | {handling[r.handling]} | {r.reply or 'n/a'} | {r.meaning} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render_table())


if __name__ == "__main__":
    main()
