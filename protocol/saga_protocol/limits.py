"""The protocol's size and depth limits: one source of truth for the decoders, the SDK, the operator
and the CRD (docs/protocol.md, "Limits").

Sizes are bytes of UTF-8 JSON in the compact form (no whitespace between tokens, non-ASCII characters
as themselves, not as \\u escapes), which is what `json_size` measures. Depth counts containers: `{}`
and `[]` are one level, `{"a": {"b": 1}}` is two, a scalar is zero.
"""

from __future__ import annotations

import json
from typing import Any, Final

#: A Kafka record's value, a command's or a reply's, at most (writers MUST NOT exceed, readers refuse).
MAX_MESSAGE_BYTES: Final = 256 * 1024
#: A whole body nested deeper than this is refused before validation (TooDeep). It is well above what a
#: valid body needs (payload and result are limited to 32 levels below it) and far below the depths at
#: which parsers recurse out of stack (Python's json near 1000, pydantic's serialiser near 250).
MAX_JSON_DEPTH: Final = 64
#: A saga's payload (spec.payload, carried unchanged in every command), serialized, at most.
MAX_PAYLOAD_BYTES: Final = 64 * 1024
#: ...and nested at most this deep (the payload object itself is level 1).
MAX_PAYLOAD_DEPTH: Final = 32
#: One step's evaluated input (a command's `input`), serialized, at most: with the payload and a result
#: (a compensation's `actionResult`) a command stays far below MAX_MESSAGE_BYTES.
MAX_INPUT_BYTES: Final = 64 * 1024
#: ...and nested at most this deep (the input object itself is level 1).
MAX_INPUT_DEPTH: Final = 32
#: One step's result (a reply's `result`), serialized, at most.
MAX_RESULT_BYTES: Final = 16 * 1024
#: ...and nested at most this deep.
MAX_RESULT_DEPTH: Final = 32
#: All step results of one saga together, as the operator records them in the Saga's status.
MAX_SAGA_RESULTS_BYTES: Final = 256 * 1024
#: A command's (and so a reply's) `attempt`, at most: 2^31-1, so that every reader (a Go int32 or int64,
#: a Java int, Python's unbounded int) reads the same range. The operator sends far fewer (its retry and
#: compensation limits), so no conforming message is near it.
MAX_ATTEMPT: Final = 2**31 - 1
#: A reply's error.reason and error.message, at most (characters).
MAX_REASON_LENGTH: Final = 128
MAX_MESSAGE_LENGTH: Final = 4096


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: how every size limit above is measured."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` has containers nested more than `limit` levels deep (iterative: any depth is safe)."""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def value_problem(value: Any, *, what: str, max_bytes: int, max_depth: int) -> tuple[str, str] | None:
    """(reason, detail) when a payload or result breaks its limits, else None. Reasons: TooDeep, Oversized."""
    if nested_deeper_than(value, max_depth):
        return "TooDeep", f"{what} nested deeper than {max_depth} levels"
    size = json_size(value)
    if size > max_bytes:
        return "Oversized", f"{what} is {size} bytes serialized, the limit is {max_bytes}"
    return None


def payload_problem(payload: Any) -> tuple[str, str] | None:
    """Why a saga payload breaks the protocol's limits, or None (the CRD checks this at apply, too)."""
    return value_problem(payload, what="payload", max_bytes=MAX_PAYLOAD_BYTES, max_depth=MAX_PAYLOAD_DEPTH)


def input_problem(value: Any) -> tuple[str, str] | None:
    """Why a command's evaluated input breaks the protocol's limits, or None."""
    return value_problem(value, what="input", max_bytes=MAX_INPUT_BYTES, max_depth=MAX_INPUT_DEPTH)


def result_problem(result: Any) -> tuple[str, str] | None:
    """Why a step result breaks the protocol's limits, or None. A participant whose handler returns such
    a result does not store it: it answers `failed` with reason ResultTooLarge."""
    return value_problem(result, what="result", max_bytes=MAX_RESULT_BYTES, max_depth=MAX_RESULT_DEPTH)
