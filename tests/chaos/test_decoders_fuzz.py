"""Fuzzing both decoders: whatever bytes and headers arrive, `decode_reply` and `decode_command` return a
message or raise `DecodeError` (whose reason goes into the dead-letter header), nothing else.

An exception of any other type would escape the operator's reply pump or loop a participant on one
record forever (see docs/chaos.md: a deeply nested body and a null header value did both). A message
that decodes must also encode again: the operator writes a reply's result into the Saga's status.

Coverage-guided fuzzing with atheris, when it installs, is in `fuzz_decoders.py` next to this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_protocol import (
    COMMAND_TYPE,
    MAX_MESSAGE_BYTES,
    REPLY_TYPE,
    Command,
    CommandKind,
    DecodeError,
    Outcome,
    Reply,
    command_id,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
)
from saga_protocol.limits import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, MAX_RESULT_BYTES, MAX_RESULT_DEPTH

Decoder = Callable[..., Command | Reply]
DECODERS: dict[str, Decoder] = {"reply": decode_reply, "command": decode_command}
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_reply() -> dict[str, Any]:
    reply = Reply(
        message_id="m-1",
        saga_uid="0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        attempt=1,
        idempotency_key="0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44/debit-buyer",
        command_id=command_id("0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44", "debit-buyer", CommandKind.ACTION, 1),
        participant="users",
        outcome=Outcome.SUCCEEDED,
        result={"debitedCents": 700},
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    body: dict[str, Any] = json.loads(encode_reply(reply)[1])
    return body


def _valid_command() -> dict[str, Any]:
    command = Command(
        message_id="m-2",
        saga_uid="0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44",
        saga_namespace="default",
        saga_name="buy-1",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        action="debit",
        attempt=1,
        idempotency_key="0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44/debit-buyer",
        payload={"buyer": "alice", "price": 700},
        reply_topic="saga.replies",
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    body: dict[str, Any] = json.loads(encode_command(command)[1])
    return body


VALID = {"reply": _valid_reply(), "command": _valid_command()}
TYPES = {"reply": REPLY_TYPE, "command": COMMAND_TYPE}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
header_values = st.none() | st.binary(max_size=40) | st.sampled_from([REPLY_TYPE.encode(), COMMAND_TYPE.encode()])
headers = st.none() | st.lists(
    st.tuples(st.sampled_from(["ce_type", "ce_id", "content-type", "x"]) | st.text(max_size=10), header_values),
    max_size=6,
)


def _decode(which: str, value: bytes | None, hdrs: Any) -> Command | Reply | None:
    """Decode; None when refused with DecodeError. Any other exception fails the test."""
    try:
        message = DECODERS[which](value, hdrs)
    except DecodeError as exc:
        assert exc.reason and exc.reason[0].isupper(), exc  # a CamelCase dead-letter reason
        return None
    # What decodes must encode again (into a reply to the operator, or a Saga's status).
    message.model_dump_json(by_alias=True)
    return message


@pytest.mark.parametrize("which", DECODERS)
@FUZZ
@given(value=st.none() | st.binary(max_size=4096), hdrs=headers)
def test_arbitrary_bytes_and_headers(which: str, value: bytes | None, hdrs: Any) -> None:
    _decode(which, value, hdrs)


@pytest.mark.parametrize("which", DECODERS)
@FUZZ
@given(body=json_values, hdrs=headers)
def test_arbitrary_json(which: str, body: Any, hdrs: Any) -> None:
    _decode(which, json.dumps(body).encode(), hdrs)


@pytest.mark.parametrize("which", DECODERS)
@FUZZ
@given(data=st.data())
def test_valid_messages_with_one_field_changed(which: str, data: st.DataObject) -> None:
    body = dict(VALID[which])
    key = data.draw(st.sampled_from([*body, "unexpected"]))
    change = data.draw(st.sampled_from(["drop", "replace"]))
    if change == "drop":
        body.pop(key, None)
    else:
        body[key] = data.draw(json_values)
    _decode(which, json.dumps(body).encode(), [("ce_type", TYPES[which].encode())])


@pytest.mark.parametrize("which", DECODERS)
@FUZZ
@given(depth=st.integers(min_value=0, max_value=20_000), container=st.sampled_from(["list", "object"]))
def test_nesting_of_any_depth(which: str, depth: int, container: str) -> None:
    """json.loads raises RecursionError near 1000 levels, and pydantic cannot serialise ~250: a payload or a
    result deeper than the protocol's limit (32 levels, docs/protocol.md) is refused, at any depth."""
    if container == "list":
        inner, innermost = "[" * depth + "]" * depth or "[]", max(depth, 1)
    else:
        inner, innermost = '{"a":' * depth + "{}" + "}" * depth, depth + 1
    field = "result" if which == "reply" else "payload"
    raw = json.dumps({**VALID[which], field: {"x": None}}).replace('{"x": null}', '{"x": ' + inner + "}")
    decoded = _decode(which, raw.encode(), None)
    field_depth = 1 + innermost  # the field's object, then the containers
    max_depth, max_bytes = (
        (MAX_RESULT_DEPTH, MAX_RESULT_BYTES) if which == "reply" else (MAX_PAYLOAD_DEPTH, MAX_PAYLOAD_BYTES)
    )
    if decoded is None:
        assert field_depth > max_depth or len(raw) > min(max_bytes, MAX_MESSAGE_BYTES)
    else:
        assert field_depth <= max_depth


@pytest.mark.parametrize("which", DECODERS)
def test_the_known_bad_inputs(which: str) -> None:
    """The inputs that once escaped as other exceptions, and the limits, each with its reason."""
    decode = DECODERS[which]
    valid = json.dumps(VALID[which]).encode()
    cases: list[tuple[bytes | None, Any, str]] = [
        (b"[" * 100_000, None, "TooDeep"),  # RecursionError in json.loads once
        (b'{"a":' * 50_000, None, "TooDeep"),
        (valid, [("ce_type", None)], "WrongType"),  # a null header value: AttributeError before
        (valid, [("ce_type", b"\xff\xfe")], "WrongType"),
        (b"\xff\xfe\x00", None, "NotJson"),
        (b"NaN", None, "NotJson"),  # not JSON (RFC 8259), though Python's json reads it
        (b"", None, "EmptyMessage"),
        (None, None, "EmptyMessage"),
        (b" " * (MAX_MESSAGE_BYTES + 1), None, "Oversized"),
    ]
    for value, hdrs, reason in cases:
        with pytest.raises(DecodeError) as caught:
            decode(value, hdrs)
        assert caught.value.reason == reason, (value[:20] if value else value, hdrs)
    assert decode(valid, [("ce_type", TYPES[which].encode()), ("x", None)]) is not None
