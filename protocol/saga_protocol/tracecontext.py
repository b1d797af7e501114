"""W3C Trace Context in the Kafka record headers (docs/protocol.md §5.1): optional, never needed to decode.

A command MAY carry `traceparent` (and `tracestate`) as the W3C Trace Context recommendation defines them
for HTTP (https://www.w3.org/TR/trace-context/), as Kafka headers of those exact lower-case names with
UTF-8 (ASCII) values; a reply MAY carry them too. No reader refuses a record for them, present, absent or
malformed: they are for tracing only, and a malformed one is dropped (the record is processed as if it had
none). A participant that does not trace SHOULD copy the command's two headers unchanged onto its reply, so
that the reply stays in the saga's trace.

These functions turn a record's headers into the text-map carrier an OpenTelemetry propagator reads, and a
carrier a propagator wrote into Kafka headers. The format itself is checked here (`traceparent_problem`),
so that the carrier only ever holds what the W3C format allows; the propagator parses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
#: The trace-context headers, in the order writers put them (after the seven CloudEvents headers).
TRACE_HEADERS: Final = (TRACEPARENT, TRACESTATE)

#: version 00: `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`, lower case; a later version may
#: append fields after a `-` (W3C: parse what you know of a higher version).
_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-[0-9a-f]{2}(-.*)?$"
)
#: W3C: at most 32 list members, 512 characters recommended as what a vendor must propagate.
MAX_TRACESTATE_LENGTH: Final = 512
MAX_TRACEPARENT_LENGTH: Final = 256

WireHeaders = Sequence[tuple[str, bytes | None]]


def traceparent_problem(value: str) -> str | None:
    """What makes `value` no W3C traceparent (None: it is one). Version ff, an all-zero trace id or parent id,
    and version 00 with anything after the flags are invalid."""
    if len(value) > MAX_TRACEPARENT_LENGTH:
        return f"longer than {MAX_TRACEPARENT_LENGTH} characters"
    match = _TRACEPARENT.match(value)
    if match is None:
        return "not version-traceid-parentid-flags in lower-case hex"
    if match["version"] == "ff":
        return "version ff is invalid"
    if match["version"] == "00" and len(value) != 55:
        return "version 00 has exactly four fields"
    if set(match["trace"]) == {"0"}:
        return "the trace id is all zeros"
    if set(match["parent"]) == {"0"}:
        return "the parent id is all zeros"
    return None


def trace_carrier(headers: WireHeaders | None) -> dict[str, str]:
    """The trace context a record carries, as a propagator's carrier: `traceparent` and, with it, `tracestate`.

    The first header of each name counts (as for every header, docs/protocol.md §5). A null value, one that
    is not ASCII, a `traceparent` that is not W3C, or a `tracestate` over 512 characters is dropped; a
    `tracestate` without a valid `traceparent` means nothing and is dropped too. Never raises."""
    found: dict[str, str] = {}
    for name, raw in headers or ():
        if name not in TRACE_HEADERS or name in found or raw is None:
            continue
        try:
            found[name] = bytes(raw).decode("ascii")
        except (UnicodeDecodeError, TypeError):
            found[name] = ""  # the first one counts: a broken first header is not replaced by a second
    parent = found.get(TRACEPARENT, "")
    if not parent or traceparent_problem(parent) is not None:
        return {}
    carrier = {TRACEPARENT: parent}
    state = found.get(TRACESTATE, "")
    if state and len(state) <= MAX_TRACESTATE_LENGTH:
        carrier[TRACESTATE] = state
    return carrier


def trace_headers(carrier: Mapping[str, str] | None) -> list[tuple[str, bytes]]:
    """The Kafka headers for a carrier a propagator filled (or `trace_carrier` returned): `traceparent`, then
    `tracestate` when there is one; nothing for a carrier without a valid `traceparent`."""
    if not carrier:
        return []
    parent = carrier.get(TRACEPARENT, "")
    if not parent or traceparent_problem(parent) is not None:
        return []
    headers = [(TRACEPARENT, parent.encode("ascii"))]
    state = carrier.get(TRACESTATE, "")
    if state and len(state) <= MAX_TRACESTATE_LENGTH and state.isascii():
        headers.append((TRACESTATE, state.encode("ascii")))
    return headers
