"""The golden messages (docs/golden/): in step with their generator, valid against the schema, and read by
the decoders and checks exactly as each file says."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from saga_protocol import (
    ANSWERED_REFUSALS,
    DEFAULT_PARTITIONS,
    DecodeError,
    command_problem,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    golden,
    partition_for,
    refusal_outcome,
    reply_problem,
)
from saga_protocol.golden_records import Record, record_from_json
from saga_protocol.reasons import BY_CODE, DECODE_REASONS

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "docs" / "golden"
SCHEMA = json.loads((REPO / "docs" / "protocol.schema.json").read_text())
DOCS = {p.stem: json.loads(p.read_text()) for p in sorted(FOLDER.glob("*.json"))}
DLQ_HEADERS = ["dlq_reason", "dlq_detail", "dlq_source", "dlq_topic", "dlq_partition", "dlq_offset", "dlq_time"]


def test_the_files_are_what_the_generator_writes() -> None:
    present = {p.name: p.read_text() for p in FOLDER.iterdir()}
    assert present == golden.render(), "docs/golden drifted: run `python -m saga_protocol.golden docs/golden`"


def _validate(body: Any, definition: str) -> None:
    schema = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.mark.parametrize("name", ["dlq-command-schema-violation", "dlq-reply-schema-violation"])
def test_the_schema_refuses_what_the_decoders_refuse(name: str) -> None:
    body = DOCS[name]["record"]["body"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(body, "Command" if "command" in name else "Reply")


def _check_valid(record: Record, body: dict[str, Any], which: str) -> None:
    _validate(body, which.capitalize())
    if which == "command":
        command = decode_command(record.value, record.headers)
        key, value, headers = encode_command(command)
    else:
        reply = decode_reply(record.value, record.headers)
        key, value, headers = encode_reply(reply)
    assert (key, value, headers) == (record.key, record.value, record.headers), "a round trip changes nothing"
    assert key == body["sagaUid"].encode()
    assert record.partition == partition_for(key, DEFAULT_PARTITIONS)
    assert dict(headers)["ce_id"] == body["messageId"].encode()


@pytest.mark.parametrize("name", [n for n, d in DOCS.items() if "decodesAs" in d["expect"]])
def test_valid_messages_validate_and_round_trip(name: str) -> None:
    doc = DOCS[name]
    _check_valid(record_from_json(doc["record"]), doc["record"]["body"], doc["expect"]["decodesAs"])


def _check_dead_letter(doc: dict[str, Any], original: Record, source: str) -> None:
    letter = record_from_json(doc["deadLetter"], original)
    names = [name for name, _ in letter.headers]
    assert names[: len(DLQ_HEADERS)] == DLQ_HEADERS
    assert letter.headers[len(DLQ_HEADERS) :] == original.headers, "the original headers follow, unchanged"
    values = dict(letter.headers[: len(DLQ_HEADERS)])
    assert values["dlq_reason"] == doc["expect"]["reason"].encode()
    assert values["dlq_source"] == source.encode()
    assert values["dlq_topic"] == original.topic.encode()
    assert values["dlq_partition"] == str(original.partition).encode()
    assert values["dlq_offset"] == str(original.offset).encode()
    assert datetime.fromisoformat((values["dlq_time"] or b"").decode()).utcoffset() is not None
    assert (letter.key, letter.value) == (original.key, original.value or b"")


@pytest.mark.parametrize("name", [n for n, d in DOCS.items() if d["expect"].get("refusedBy") == "participant"])
def test_participant_refusals(name: str) -> None:
    doc = DOCS[name]
    reason = doc["expect"]["reason"]
    config = doc["participant"]
    original = record_from_json(doc["record"])
    assert original.topic == f"saga.commands.{config['name']}"
    _check_dead_letter(doc, original, config["name"])
    assert f"{original.topic}.dlq" == doc["deadLetter"]["topic"]
    if reason == "Undecodable":  # a transport failure: there is nothing to decode
        assert doc["reply"] is None
        return
    if reason in DECODE_REASONS:
        with pytest.raises(DecodeError) as caught:
            decode_command(original.value, original.headers)
        assert caught.value.reason == reason
        assert doc["reply"] is None
        return
    command = decode_command(original.value, original.headers)
    handlers = config["actions"] if command.kind.value == "action" else config["compensations"]
    problem = command_problem(
        command,
        key=original.key,
        trusted_reply_topic=config["trustedReplyTopic"],
        allowed_namespaces=config["allowedNamespaces"],
        handlers=handlers,
    )
    assert problem is not None and problem[0] == reason
    if reason not in ANSWERED_REFUSALS:
        assert doc["reply"] is None
        return
    reply_record = record_from_json(doc["reply"])
    assert reply_record.topic == config["trustedReplyTopic"]
    _check_valid(reply_record, doc["reply"]["body"], "reply")
    reply = decode_reply(reply_record.value, reply_record.headers)
    assert reply.outcome is refusal_outcome(command.kind)
    assert reply.error is not None and reply.error.reason == reason
    assert reply.command_id == command.message_id


@pytest.mark.parametrize("name", [n for n, d in DOCS.items() if d["expect"].get("refusedBy") == "operator"])
def test_operator_dead_letters(name: str) -> None:
    doc = DOCS[name]
    reason = doc["expect"]["reason"]
    original = record_from_json(doc["record"])
    _check_dead_letter(doc, original, "saga-operator")
    assert doc["deadLetter"]["topic"] == "saga.replies.dlq"
    if reason in DECODE_REASONS:
        with pytest.raises(DecodeError) as caught:
            decode_reply(original.value, original.headers)
        assert caught.value.reason == reason
        return
    reply = decode_reply(original.value, original.headers)
    problem = reply_problem(
        reply, topic=original.topic, participant=doc["operator"]["stepParticipant"], key=original.key
    )
    assert problem is not None and problem[0] == reason


def test_every_reason_of_the_golden_files_is_registered_and_every_participant_dead_letter_has_a_file() -> None:
    used = {d["expect"]["reason"] for d in DOCS.values() if "reason" in d["expect"]}
    assert used <= set(BY_CODE)
    participant = {r.code for r in BY_CODE.values() if r.who != "operator" and r.handling == "dead-lettered"}
    assert participant - used == {"ReplyUndeliverable"}
