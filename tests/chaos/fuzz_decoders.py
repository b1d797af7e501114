"""Coverage-guided fuzzing of both decoders with atheris (optional: `pip install atheris`, a libFuzzer
wheel for CPython on Linux x86-64). Not collected by pytest; the hypothesis tests in
`test_decoders_fuzz.py` run in `make test`.

    python tests/chaos/fuzz_decoders.py -atheris_runs=200000        # or -max_total_time=60 [CORPUS_DIR]

Without a corpus directory it starts from valid messages (written to a temporary directory).

The property is the same: `decode_reply` and `decode_command` return a message or raise `DecodeError`;
a message that decodes also encodes again. The first input byte chooses the decoder and a header
variant, the rest is the message value.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from saga_protocol import (
    COMMAND_TYPE,
    REPLY_TYPE,
    Command,
    CommandKind,
    DecodeError,
    ErrorInfo,
    Outcome,
    Reply,
    command_id,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
)

HEADERS: list[list[tuple[str, bytes | None]] | None] = [
    None,
    [],
    [("ce_type", REPLY_TYPE.encode())],
    [("ce_type", COMMAND_TYPE.encode())],
    [("ce_type", None)],
    [("ce_type", b"\xff\xfe"), ("x", None)],
]


def one_input(data: bytes) -> None:
    if not data:
        return
    selector, value = data[0], data[1:]
    decode = decode_reply if selector & 1 else decode_command
    headers = HEADERS[(selector >> 1) % len(HEADERS)]
    try:
        message = decode(value, headers)
    except DecodeError:
        return
    message.model_dump_json(by_alias=True)


def seed_corpus(directory: Path) -> None:
    """Valid messages to start from: random bytes alone seldom make it past json.loads."""
    uid, now = "0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44", datetime(2026, 1, 1, tzinfo=UTC)
    command = Command(
        message_id="m-1",
        saga_uid=uid,
        saga_namespace="default",
        saga_name="buy-1",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        action="debit",
        attempt=1,
        idempotency_key=f"{uid}/debit-buyer",
        payload={"buyer": "alice", "price": 700, "simulate": {"users": {"delaySeconds": 1}}},
        reply_topic="saga.replies",
        sent_at=now,
    )
    reply = Reply(
        message_id="m-2",
        saga_uid=uid,
        step="debit-buyer",
        kind=CommandKind.ACTION,
        attempt=1,
        idempotency_key=f"{uid}/debit-buyer",
        command_id=command_id(uid, "debit-buyer", CommandKind.ACTION, 1),
        participant="users",
        outcome=Outcome.FAILED,
        error=ErrorInfo(reason="InsufficientFunds", message="no"),
        sent_at=now,
    )
    directory.mkdir(parents=True, exist_ok=True)
    for selector in range(2 * len(HEADERS)):
        body = encode_reply(reply)[1] if selector & 1 else encode_command(command)[1]
        (directory / f"seed-{selector}").write_bytes(bytes([selector]) + body)


def main() -> None:
    import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

    argv = list(sys.argv)
    if not [a for a in argv[1:] if not a.startswith("-")]:
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-decoders-"))
        seed_corpus(corpus)
        argv.append(str(corpus))
    atheris.instrument_all()  # after the imports above: saga_protocol and pydantic's Python parts
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
