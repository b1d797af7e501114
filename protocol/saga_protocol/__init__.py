"""The wire format between the saga operator and participant services, protocol v2.

Both sides import these models; participants in other languages implement docs/protocol.md and validate
against the JSON Schema generated from the models (`docs/protocol.schema.json`). Golden messages are in
docs/golden/ (`python -m saga_protocol.golden`).
"""

from saga_protocol.checks import expected_command_id, reply_answers, reply_problem
from saga_protocol.ids import COMMAND_ID_NAMESPACE, command_id, idempotency_key
from saga_protocol.kinds import CommandKind, Outcome
from saga_protocol.limits import (
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    MAX_RESULT_BYTES,
    MAX_RESULT_DEPTH,
    MAX_SAGA_RESULTS_BYTES,
    json_size,
    payload_problem,
    result_problem,
)
from saga_protocol.messages import (
    COMMAND_TYPE,
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    REPLY_TYPE,
    SPEC_VERSION,
    Command,
    DecodeError,
    ErrorInfo,
    Reply,
    answer,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
)
from saga_protocol.partition import murmur2, partition_for
from saga_protocol.topics import (
    DEAD_LETTER_PARTITIONS,
    DEFAULT_PARTITIONS,
    OPERATOR_GROUP,
    REPLY_DEAD_LETTER_TOPIC,
    REPLY_TOPIC,
    command_topic,
    dead_letter_topic,
    operator_source,
    participant_group,
    participant_source,
    reply_topic,
)

__all__ = [
    "COMMAND_ID_NAMESPACE",
    "COMMAND_TYPE",
    "CONTENT_TYPE",
    "DEAD_LETTER_PARTITIONS",
    "DEFAULT_PARTITIONS",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "MAX_RESULT_BYTES",
    "MAX_RESULT_DEPTH",
    "MAX_SAGA_RESULTS_BYTES",
    "OPERATOR_GROUP",
    "PROTOCOL_VERSION",
    "REPLY_DEAD_LETTER_TOPIC",
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
    "command_id",
    "command_topic",
    "dead_letter_topic",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
    "expected_command_id",
    "idempotency_key",
    "json_size",
    "murmur2",
    "operator_source",
    "participant_group",
    "participant_source",
    "partition_for",
    "payload_problem",
    "reply_answers",
    "reply_problem",
    "reply_topic",
    "result_problem",
]
