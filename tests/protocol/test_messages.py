"""Protocol v2's models and pure helpers: ids, partitioner, limits, strict forward-compatible decoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from saga_protocol import (
    COMMAND_TYPE,
    MAX_ATTEMPT,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    MAX_RESULT_BYTES,
    REPLY_TYPE,
    Command,
    CommandKind,
    DecodeError,
    ErrorInfo,
    Outcome,
    Reply,
    answer,
    command_id,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    murmur2,
    partition_for,
    reply_problem,
    reply_topic,
)

UID = "0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def command(**changes: Any) -> Command:
    fields: dict[str, Any] = dict(
        message_id=command_id(UID, "debit-buyer", "action", 1),
        saga_uid=UID,
        saga_namespace="shop",
        saga_name="buy-1",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        action="debit",
        attempt=1,
        idempotency_key=f"{UID}/debit-buyer",
        payload={"buyer": "alice", "price": 1500},
        reply_topic="saga.replies.users",
        sent_at=T0,
    )
    fields.update(changes)
    return Command(**fields)


def body_of(message: Command | Reply) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.model_dump_json(by_alias=True, exclude_none=True))
    return value


def test_command_ids_are_uuid5_of_saga_step_kind_and_attempt() -> None:
    # The vectors docs/protocol.md gives a participant author.
    assert command_id(UID, "debit-buyer", CommandKind.ACTION, 1) == "30436722-dc2f-5833-81cf-75b041674185"
    assert command_id(UID, "debit-buyer", "action", 2) == "6b35be13-27c9-5cd8-963e-70ed581cddc8"
    assert command_id(UID, "debit-buyer", "compensation", 1) == "ffe134e7-0413-51cb-bc8b-aadb7c3a0da4"
    with pytest.raises(ValueError):
        command_id(UID, "debit-buyer", "action", 0)


@pytest.mark.parametrize(
    ("key", "signed"),
    [  # Kafka's own test vectors (UtilsTest.testMurmur2), as Java's signed ints
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF == aiokafka_murmur2(key)


def test_partition_for_matches_the_java_default_partitioner() -> None:
    for n in range(1, 10):
        key = f"saga-{n}".encode()
        assert partition_for(key, 6) == (aiokafka_murmur2(key) & 0x7FFFFFFF) % 6
    assert partition_for(UID.encode(), 6) == 0


def test_answer_echoes_the_command_id_and_the_outcome_rules_hold() -> None:
    c = command()
    reply = answer(c, "users", Outcome.SUCCEEDED, result={"debitedCents": 1500})
    assert (reply.command_id, reply.attempt, reply.kind) == (c.message_id, 1, CommandKind.ACTION)
    refused = answer(c, "users", Outcome.FAILED, result={"ignored": True}, error=ErrorInfo(reason="NoMoney"))
    assert refused.result is None
    with pytest.raises(ValueError, match="error is required"):
        answer(c, "users", Outcome.FAILED)
    with pytest.raises(ValueError, match="error is required"):
        answer(c, "users", Outcome.ERROR)
    with pytest.raises(ValueError, match="only with outcome failed or error"):
        answer(c, "users", Outcome.SUCCEEDED, error=ErrorInfo(reason="Odd"))


def test_encoded_messages_carry_v2_headers_and_decode_again() -> None:
    c = command()
    key, value, headers = encode_command(c)
    names = dict(headers)
    assert key == UID.encode()
    assert names["ce_type"] == COMMAND_TYPE.encode() == b"dev.saga.command.v2"
    assert names["ce_source"] == b"/saga-operator/shop"
    assert names["ce_id"] == c.message_id.encode()
    assert names["ce_time"] == b"2026-01-01T00:00:00.000000Z"
    assert decode_command(value, headers) == c
    reply = answer(c, "users", Outcome.SUCCEEDED, result={})
    key, value, headers = encode_reply(reply)
    assert dict(headers)["ce_type"] == REPLY_TYPE.encode()
    assert dict(headers)["ce_source"] == b"/participants/users"
    assert decode_reply(value, headers) == reply


def test_readers_ignore_unknown_fields_and_accept_any_offset() -> None:
    body = body_of(command())
    body["futureField"] = {"nested": [1, 2]}
    body["sentAt"] = "2026-01-01T05:30:00+05:30"
    decoded = decode_command(json.dumps(body).encode())
    assert decoded.sent_at == T0
    reply = body_of(answer(command(), "users", Outcome.SUCCEEDED, result={}))
    reply["signature"] = "later"
    assert decode_reply(json.dumps(reply).encode()).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempt", "1"),  # no coercion between JSON types
        ("attempt", 1.0),
        ("attempt", True),
        ("sagaUid", 7),
        ("kind", "undo"),
        ("sentAt", 1767225600),
        ("sentAt", "2026-01-01T00:00:00"),  # no offset
        ("payload", []),
        ("payload", None),  # OPTIONAL means absent, not null
        ("payload", "x"),
        ("sagaName", None),  # a null field is the wrong type, not a missing one
        ("attempt", 0),
        ("attempt", 2**31),  # above MAX_ATTEMPT
    ],
)
def test_known_fields_of_the_wrong_type_are_refused(field: str, value: Any) -> None:
    body = body_of(command())
    body[field] = value
    with pytest.raises(DecodeError) as caught:
        decode_command(json.dumps(body).encode())
    assert caught.value.reason == "SchemaViolation"


def test_python_field_names_are_not_wire_names() -> None:
    body = body_of(command())
    body["saga_uid"] = body.pop("sagaUid")
    with pytest.raises(DecodeError, match="sagaUid"):
        decode_command(json.dumps(body).encode())


def test_field_names_match_exactly_and_a_differently_cased_one_is_an_unknown_field() -> None:
    body = body_of(command())
    body["SAGAUID"] = "someone-else"  # ignored, as any unknown field
    assert decode_command(json.dumps(body).encode()).saga_uid == UID
    body["SAGAUID"] = body.pop("sagaUid")
    with pytest.raises(DecodeError, match="sagaUid"):
        decode_command(json.dumps(body).encode())


def test_the_attempt_bound_and_an_absent_payload() -> None:
    body = body_of(command(attempt=MAX_ATTEMPT))
    assert decode_command(json.dumps(body).encode()).attempt == 2**31 - 1
    del body["payload"]
    assert decode_command(json.dumps(body).encode()).payload == {}


def test_every_ce_type_header_counts_and_header_names_are_exact() -> None:
    _, value, headers = encode_command(command())
    for extra in [("ce_type", b"dev.saga.command.v1"), ("ce_type", None)]:
        with pytest.raises(DecodeError) as caught:
            decode_command(value, [*headers, extra])
        assert caught.value.reason == "WrongType"
    assert decode_command(value, [*headers, ("ce_type", COMMAND_TYPE.encode())]).attempt == 1
    assert decode_command(value, [*headers, ("CE_TYPE", b"anything")]).attempt == 1  # another header


def test_a_reply_without_command_id_or_with_a_result_on_failure_is_refused() -> None:
    good = body_of(answer(command(), "users", Outcome.FAILED, error=ErrorInfo(reason="NoMoney")))
    for broken in ({k: v for k, v in good.items() if k != "commandId"}, {**good, "result": {"x": 1}}):
        with pytest.raises(DecodeError) as caught:
            decode_reply(json.dumps(broken).encode())
        assert caught.value.reason == "SchemaViolation"
    without_error = {k: v for k, v in good.items() if k != "error"}
    with pytest.raises(DecodeError):
        decode_reply(json.dumps(without_error).encode())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "EmptyMessage"),
        (b"", "EmptyMessage"),
        (b"\xff\xfe", "NotJson"),
        (b"NaN", "NotJson"),
        (b'{"a": 1, "a": 2}', "NotJson"),
        (b"{} {}", "NotJson"),
        (b'{"price": 1e400}', "NotJson"),  # beyond a double: it would read as Infinity
        (b'{"price": -1e400}', "NotJson"),
        (b'{"a": ["\\ud800"]}', "NotJson"),  # an unpaired surrogate: no UTF-8 text carries it
        (b'{"\\udc00": 1}', "NotJson"),
        (b"[]", "NotAnObject"),
        (b"[" * 100_000, "TooDeep"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "TooDeep"),
    ],
)
def test_bad_bytes_have_one_reason_each(value: bytes | None, reason: str) -> None:
    for decode in (decode_command, decode_reply):
        with pytest.raises(DecodeError) as caught:
            decode(value)
        assert caught.value.reason == reason


def test_payload_and_result_limits() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_PAYLOAD_DEPTH):  # the payload object itself plus 32 more: 33 levels
        node["x"] = {}
        node = node["x"]
    for payload, reason in (({"pad": "x" * MAX_PAYLOAD_BYTES}, "Oversized"), (deep, "TooDeep")):
        body = {**body_of(command()), "payload": payload}
        with pytest.raises(DecodeError) as caught:
            decode_command(json.dumps(body).encode())
        assert caught.value.reason == reason
    fits = {**body_of(command()), "payload": {"pad": "x" * (MAX_PAYLOAD_BYTES - 20)}}
    assert decode_command(json.dumps(fits).encode())
    reply = {
        **body_of(answer(command(), "users", Outcome.SUCCEEDED, result={})),
        "result": {"p": "x" * MAX_RESULT_BYTES},
    }
    with pytest.raises(DecodeError) as caught:
        decode_reply(json.dumps(reply).encode())
    assert caught.value.reason == "Oversized"


def test_a_v1_message_is_the_wrong_type() -> None:
    _, value, _ = encode_command(command())
    with pytest.raises(DecodeError) as caught:
        decode_command(value, [("ce_type", b"dev.saga.command.v1")])
    assert caught.value.reason == "WrongType"


def test_reply_problem_names_the_first_broken_rule() -> None:
    c = command()
    good = answer(c, "users", Outcome.SUCCEEDED, result={})
    topic = reply_topic("users")
    assert reply_problem(good, topic=topic, participant="users", key=UID.encode()) is None
    assert reply_problem(good, topic="saga.replies.agents", participant="users")[0] == "WrongReplyTopic"  # type: ignore[index]
    assert reply_problem(good, topic=reply_topic("agents"), participant="agents")[0] == "ParticipantMismatch"  # type: ignore[index]
    assert reply_problem(good, topic=topic, participant="users", key=b"other")[0] == "KeyMismatch"  # type: ignore[index]
    forged = good.model_copy(update={"command_id": command_id(UID, "debit-buyer", "action", 2)})
    assert reply_problem(forged, topic=topic, participant="users")[0] == "CommandIdMismatch"  # type: ignore[index]
    stray = good.model_copy(update={"idempotency_key": f"{UID}/other"})
    assert reply_problem(stray, topic=topic, participant="users")[0] == "IdempotencyKeyMismatch"  # type: ignore[index]


def test_topic_names() -> None:
    assert reply_topic("users") == "saga.replies.users"
    for bad in ("dlq", "Users", "a.b"):
        with pytest.raises(ValueError):
            reply_topic(bad)
