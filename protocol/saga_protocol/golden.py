"""The golden messages of protocol v2 (docs/golden/): `python -m saga_protocol.golden docs/golden`.

One file per case: commands, a reply of each outcome, replays, the tombstone refusal, and every
dead-letter case of both sides with its headers. Details of dead letters come from the decoders and
checks themselves, so the files say what the code does. `--check` exits 1 when the folder drifted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from saga_protocol.checks import command_problem, reply_problem
from saga_protocol.golden_records import (
    PARTICIPANT,
    PARTICIPANT_CONFIG,
    UID,
    Record,
    command_record,
    decodes_doc,
    golden_command,
    golden_reply,
    nested,
    refused_command_doc,
    refused_reply_doc,
    reply_record,
)
from saga_protocol.ids import command_id
from saga_protocol.kinds import CommandKind, Outcome
from saga_protocol.limits import MAX_MESSAGE_BYTES, MAX_PAYLOAD_DEPTH
from saga_protocol.messages import DecodeError, ErrorInfo, decode_command, decode_reply, encode_command, encode_reply
from saga_protocol.topics import reply_topic

ACTION, COMPENSATION = CommandKind.ACTION, CommandKind.COMPENSATION
RESULT = {"buyer": "alice", "debitedCents": 1500, "balanceCents": 8500}
#: A step input as the operator evaluates it: {"reference": "${steps['record-purchase'].result.purchaseId}", ...}.
STEP_INPUT = {"reference": "purchase-3f2a", "amount": 1500, "buyer": "alice"}


def _detail(decode: Callable[..., Any], record: Record) -> tuple[str, str]:
    try:
        decode(record.value, record.headers)
    except DecodeError as exc:
        return exc.reason, exc.detail
    raise AssertionError("a golden dead letter decoded")


def _participant_refusal(name: str, description: str, record: Record, refuse: bool = True) -> dict[str, Any]:
    command = decode_command(record.value, record.headers)
    handlers = PARTICIPANT_CONFIG["actions"] if command.kind is ACTION else PARTICIPANT_CONFIG["compensations"]
    problem = command_problem(
        command,
        key=record.key,
        trusted_reply_topic=reply_topic(PARTICIPANT),
        allowed_namespaces=PARTICIPANT_CONFIG["allowedNamespaces"],
        handlers=handlers,
    )
    assert problem is not None, name
    reason, detail = problem
    reply = None
    if refuse:
        outcome = Outcome.FAILED if command.kind is ACTION else Outcome.ERROR
        reply = golden_reply(command, outcome, 90, error=ErrorInfo(reason=reason, message=detail))
    return refused_command_doc(description, record, reason, detail, reply)


def _command_dlq(description: str, record: Record) -> dict[str, Any]:
    reason, detail = _detail(decode_command, record)
    return refused_command_doc(description, record, reason, detail)


def _reply_dlq(description: str, record: Record, attribute: bool = False) -> dict[str, Any]:
    if attribute:
        reply = decode_reply(record.value, record.headers)
        problem = reply_problem(reply, topic=record.topic, participant=PARTICIPANT, key=record.key)
        assert problem is not None
        reason, detail = problem
    else:
        reason, detail = _detail(decode_reply, record)
    return refused_reply_doc(description, record, reason, detail)


def cases() -> dict[str, dict[str, Any]]:
    action, retry, compensation = golden_command(), golden_command(attempt=2), golden_command(COMPENSATION)
    ok = golden_reply(action, Outcome.SUCCEEDED, 1, result=RESULT)
    docs: dict[str, dict[str, Any]] = {
        "command-action": decodes_doc("An action command, attempt 1.", command_record(action), "command"),
        "command-action-attempt-2": decodes_doc(
            "The same step's attempt 2 (after a timeout): a new messageId, the same idempotencyKey.",
            command_record(retry, offset=8),
            "command",
        ),
        "command-compensation": decodes_doc(
            "The step's compensation, attempt 1: kind compensation, the step's compensation handler, the same key.",
            command_record(compensation, offset=9),
            "command",
        ),
        "command-action-with-input": decodes_doc(
            "An action command of a step that declares an input: the input as the operator evaluated it before "
            "the first attempt (here from an earlier step's result), beside the unchanged payload.",
            command_record(golden_command(input=STEP_INPUT), offset=10),
            "command",
        ),
        "command-compensation-with-input": decodes_doc(
            "The compensation of that step: the action's input again, and actionResult, the result the operator "
            "recorded for the action.",
            command_record(golden_command(COMPENSATION, input=STEP_INPUT, action_result=RESULT), offset=11),
            "command",
        ),
        "reply-succeeded": decodes_doc("The action succeeded; its result.", reply_record(ok), "reply"),
        "reply-failed": decodes_doc(
            "A business refusal: nothing applied, stored, never retried.",
            reply_record(
                golden_reply(
                    action,
                    Outcome.FAILED,
                    2,
                    error=ErrorInfo(reason="InsufficientFunds", message="alice has 900 cents, the purchase costs 1500"),
                )
            ),
            "reply",
        ),
        "reply-error": decodes_doc(
            "A transient failure: nothing stored, the operator retries per the step's policy.",
            reply_record(
                golden_reply(
                    action,
                    Outcome.ERROR,
                    3,
                    error=ErrorInfo(reason="Unavailable", message="the accounts database did not answer"),
                )
            ),
            "reply",
        ),
        "reply-duplicate": decodes_doc(
            "Attempt 2 redelivered after attempt 1 was applied: the stored outcome replayed, duplicate true, "
            "echoing attempt 2 and its commandId.",
            reply_record(golden_reply(retry, Outcome.SUCCEEDED, 4, result=RESULT, duplicate=True), offset=4),
            "reply",
        ),
        "reply-compensation-succeeded": decodes_doc(
            "The compensation undid the applied action.",
            reply_record(
                golden_reply(
                    compensation,
                    Outcome.SUCCEEDED,
                    5,
                    result={"buyer": "alice", "refundedCents": 1500, "balanceCents": 10000},
                ),
                offset=5,
            ),
            "reply",
        ),
        "reply-compensation-tombstone": decodes_doc(
            "The compensation arrived before any action was applied: a no-op that leaves a tombstone.",
            reply_record(
                golden_reply(compensation, Outcome.SUCCEEDED, 6, result={"noop": "ActionNotApplied"}), offset=6
            ),
            "reply",
        ),
    }
    late = ErrorInfo(
        reason="AlreadyCompensated",
        message=f"step debit-buyer of saga {UID} was compensated before this action arrived; nothing was applied",
    )
    docs["reply-already-compensated"] = decodes_doc(
        "The late action after the tombstone: refused, nothing applied, the refusal stored.",
        reply_record(golden_reply(action, Outcome.FAILED, 7, error=late), offset=7),
        "reply",
    )
    docs["reply-already-compensated-replay"] = decodes_doc(
        "The late action redelivered as attempt 2: the stored refusal replayed.",
        reply_record(golden_reply(retry, Outcome.FAILED, 8, error=late, duplicate=True), offset=8),
        "reply",
    )
    docs.update(_participant_dead_letters(action))
    docs.update(_operator_dead_letters(ok))
    return docs


def _participant_dead_letters(action: Any) -> dict[str, dict[str, Any]]:
    base = command_record(action, offset=41)
    _, v1_value, v1_headers = encode_command(action)
    v1_headers = [(n, b"dev.saga.command.v1" if n == "ce_type" else raw) for n, raw in v1_headers]
    body = json.loads(base.value or b"")
    missing = {k: v for k, v in body.items() if k != "idempotencyKey"}
    deep = {**body, "payload": nested(MAX_PAYLOAD_DEPTH + 1)}
    oversized = {**body, "payload": {"padding": "x" * MAX_MESSAGE_BYTES}}

    def raw(value: bytes | None) -> Record:
        return command_record(action, offset=41, value=value)

    def cmd(**changes: Any) -> Record:
        return command_record(golden_command(**changes), offset=41)

    return {
        "dlq-command-empty-null": _command_dlq(
            "A null value (what Kafka calls a tombstone record, not a saga tombstone).", raw(None)
        ),
        "dlq-command-empty-value": _command_dlq("A zero-length value.", raw(b"")),
        "dlq-command-not-json": _command_dlq("Bytes that are not JSON.", raw(b"\xff\xfe{not json")),
        "dlq-command-not-an-object": _command_dlq("JSON, but an array.", raw(b'["debit"]')),
        "dlq-command-oversized": _command_dlq("A value over 256 KiB.", raw(json.dumps(oversized).encode())),
        "dlq-command-too-deep": _command_dlq("A payload nested 33 levels deep.", raw(json.dumps(deep).encode())),
        "dlq-command-wrong-type": _command_dlq(
            "A v1 command (ce_type dev.saga.command.v1).",
            command_record(action, offset=41, value=v1_value, headers=v1_headers),
        ),
        "dlq-command-schema-violation": _command_dlq(
            "A command without idempotencyKey.", raw(json.dumps(missing).encode())
        ),
        "dlq-command-undecodable": refused_command_doc(
            "A record whose batch did not decompress: value as read (here none), offsets kept, skipped.",
            raw(None),
            "Undecodable",
            "the record batch at offset 41 could not be decompressed (zstd: corrupt data)",
        ),
        "dlq-command-untrusted-reply-topic": _participant_refusal(
            "untrusted",
            "A command naming another reply topic: dead-lettered, answered on no topic.",
            cmd(reply_topic="saga.replies.agents"),
            refuse=False,
        ),
        "dlq-command-key-mismatch": _participant_refusal(
            "key",
            "A record keyed by something else than its sagaUid.",
            command_record(action, offset=41, key=b"someone-else"),
        ),
        "dlq-command-idempotency-key-mismatch": _participant_refusal(
            "idem", "An idempotencyKey that is not <sagaUid>/<step>.", cmd(idempotency_key=f"{UID}/another-step")
        ),
        "dlq-command-namespace-not-allowed": _participant_refusal(
            "ns",
            "An action from a namespace this participant does not admit: answered failed.",
            cmd(saga_namespace="intruders"),
        ),
        "dlq-command-namespace-not-allowed-compensation": _participant_refusal(
            "ns-c",
            "A compensation from a namespace not admitted: answered error, so that the saga parks for a person.",
            command_record(golden_command(COMPENSATION, saga_namespace="intruders"), offset=41),
        ),
        "dlq-command-unknown-action": _participant_refusal(
            "unknown", "An action this participant has no handler for: answered failed.", cmd(action="levitate")
        ),
    }


def _operator_dead_letters(ok: Any) -> dict[str, dict[str, Any]]:
    good = reply_record(ok, offset=12)
    body = json.loads(good.value or b"")
    v1 = {k: v for k, v in body.items() if k != "commandId"}
    _, value, headers = encode_reply(ok)
    v1_headers = [(n, b"dev.saga.reply.v1" if n == "ce_type" else raw) for n, raw in headers]
    big = {**body, "result": {"padding": "x" * (16 * 1024)}}

    def raw(value: bytes | None, hdrs: Any = None, topic: str | None = None) -> Record:
        return Record(
            topic or good.topic, good.key, value, hdrs if hdrs is not None else good.headers, good.partition, 12
        )

    forged = ok.model_copy(update={"command_id": command_id(UID, "debit-buyer", "action", 5)})
    foreign = ok.model_copy(update={"participant": "agents"})
    return {
        "dlq-reply-not-json": _reply_dlq("A reply that is not JSON.", raw(b"OK")),
        "dlq-reply-wrong-type": _reply_dlq("A v1 reply (ce_type dev.saga.reply.v1).", raw(value, v1_headers)),
        "dlq-reply-schema-violation": _reply_dlq(
            "A reply without commandId (v1's shape under the v2 type).", raw(json.dumps(v1).encode())
        ),
        "dlq-reply-oversized-result": _reply_dlq("A result over 16 KiB.", raw(json.dumps(big).encode())),
        "dlq-reply-wrong-reply-topic": _reply_dlq(
            "users' reply written on agents' reply topic.", raw(value, topic=reply_topic("agents")), attribute=True
        ),
        "dlq-reply-participant-mismatch": _reply_dlq(
            "A reply on users' topic that names another participant.",
            raw(encode_reply(foreign)[1], encode_reply(foreign)[2]),
            attribute=True,
        ),
        "dlq-reply-command-id-mismatch": _reply_dlq(
            "A commandId that is not the id of the reply's own kind and attempt.",
            reply_record(forged, offset=12),
            attribute=True,
        ),
    }


#: The README's description of the files' format.
FORMAT: Final = """\
## The format

Each file is one JSON object:

- `description`: the case, for a person.
- `record`: the Kafka record a reader consumes: `topic`, `partition`, `offset`, `key` (UTF-8 text, or
  null), `headers` and `value`; and `body`, the parsed value, when the value is a JSON object of at most
  16 KiB (for reading; the bytes are `value`'s).
- `headers`: a list of `[name, value]` pairs in their order on the record (a name may repeat); `value` is
  the header's UTF-8 text, or null for a null header value.
- `value`: `{"utf8": TEXT}`, the exact bytes when they are UTF-8; `{"base64": TEXT}`, the exact bytes
  when they are not; null for a null value; and, in a dead letter only, `{"sameAs": "record"}`: the
  original's bytes unchanged, not written twice (a value over 16 KiB).
- `expect`: what a reader must make of the record. `{"decodesAs": "command"}` or `"reply"`: it decodes,
  and encodes again to the same body (Python's encoder: to the same bytes and headers).
  `{"refusedBy": "participant" | "operator", "reason": R}`: that party dead-letters it with reason `R`.
- `participant` (refused commands): the configuration the expectation assumes: `name`,
  `trustedReplyTopic`, `allowedNamespaces` (a list; the participant admits only these), `actions` and
  `compensations` (the handler names it has). `operator` (refused replies): `stepParticipant`, the
  participant of the step the reply names.
- `deadLetter` (refused records): the record the refusing party produces, in the form of `record`, on
  `saga.commands.<p>.dlq` or `saga.replies.dlq`. A null original value is shown as zero bytes
  (`{"utf8": ""}`); the Python writer keeps it null, and both are right (protocol.md, Dead letters).
- `reply` (refused commands): the refusal the participant answers on its trusted reply topic, in the
  form of `record`, or null when it answers nothing (`UntrustedReplyTopic`, the decoding reasons).

Not meant to match byte for byte (compare them by their rules instead):

- `dlq_detail` and a refusal's `error.message`: the Python code's own words (a decoder's message such as
  `'utf-8' codec can't decode byte 0xff ...` included). Match `dlq_reason` and `error.reason`.
- `dlq_time`: the moment of setting aside (fixed here); any RFC 3339 UTC time.
- Of replies: `messageId` (and `ce_id`), `sentAt` (and `ce_time`); fresh on every reply, fixed here.
- The `partition` and `offset` of a dead letter and of a refusal reply, which the broker assigns
  (a reply's partition is murmur2 of its key over 6 partitions here; protocol.md section 3.1).
- The order of a body's fields and the JSON spelling of its values: the files are Python's compact
  encoding, and a reader compares parsed values."""


def render() -> dict[str, str]:
    files = {f"{name}.json": json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in cases().items()}
    index = [
        "# Golden messages of protocol v2",
        "",
        "Generated by `python -m saga_protocol.golden docs/golden`; see docs/protocol.md.",
        "",
        FORMAT,
        "",
        "## The files",
        "",
    ]
    index += ["| File | Expect | Case |", "| --- | --- | --- |"]
    for name, doc in cases().items():
        expect = doc["expect"]
        what = (
            f"decodes as a {expect['decodesAs']}"
            if "decodesAs" in expect
            else f"{expect['reason']} ({expect['refusedBy']})"
        )
        index.append(f"| [{name}.json]({name}.json) | {what} | {doc['description']} |")
    files["README.md"] = "\n".join(index) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saga_protocol.golden", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the folder differs, write nothing")
    args = parser.parse_args(argv)
    wanted = render()
    present = {p.name: p.read_text() for p in args.folder.glob("*")} if args.folder.is_dir() else {}
    if args.check:
        return 0 if present == wanted else 1
    args.folder.mkdir(parents=True, exist_ok=True)
    for stale in set(present) - set(wanted):
        (args.folder / stale).unlink()
    for name, text in wanted.items():
        (args.folder / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
