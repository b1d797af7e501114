"""The wire format between the saga operator and participant services.

Both sides import these models; participants in other languages validate against the JSON Schema
generated from them (`docs/protocol.schema.json`). See `docs/protocol.md`.
"""

from saga_protocol.messages import (
    COMMAND_TYPE,
    MAX_MESSAGE_BYTES,
    REPLY_TYPE,
    SPEC_VERSION,
    Command,
    CommandKind,
    DecodeError,
    ErrorInfo,
    Outcome,
    Reply,
    answer,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    idempotency_key,
)
from saga_protocol.topics import (
    REPLY_TOPIC,
    command_topic,
    dead_letter_topic,
)

__all__ = [
    "COMMAND_TYPE",
    "MAX_MESSAGE_BYTES",
    "REPLY_TOPIC",
    "REPLY_TYPE",
    "SPEC_VERSION",
    "Command",
    "CommandKind",
    "DecodeError",
    "ErrorInfo",
    "Outcome",
    "Reply",
    "answer",
    "command_topic",
    "dead_letter_topic",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
    "idempotency_key",
]
