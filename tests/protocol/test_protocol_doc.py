"""docs/protocol.md says what the code does: its reason table, fields, vectors, limits and references."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saga_protocol import (
    COMMAND_ID_NAMESPACE,
    COMMAND_TYPE,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    MAX_RESULT_BYTES,
    MAX_RESULT_DEPTH,
    MAX_SAGA_RESULTS_BYTES,
    REPLY_TYPE,
    Command,
    ErrorInfo,
    Reply,
    command_id,
    murmur2,
    partition_for,
)
from saga_protocol.reasons import render_table

DOCS = Path(__file__).resolve().parents[2] / "docs"
TEXT = (DOCS / "protocol.md").read_text()


def test_the_reason_table_is_the_registry() -> None:
    table = TEXT.split("<!-- reasons:begin -->\n", 1)[1].split("<!-- reasons:end -->", 1)[0]
    assert table == render_table(), "run `python -m saga_protocol.reasons` and paste it into docs/protocol.md"


@pytest.mark.parametrize("model", [Command, Reply, ErrorInfo])
def test_every_wire_field_is_documented(model: type[Command | Reply | ErrorInfo]) -> None:
    for name, field in model.model_fields.items():
        assert f"`{field.alias or name}`" in TEXT, f"{model.__name__}.{field.alias or name}"


def test_the_types_ids_and_vectors_are_the_codes() -> None:
    assert f"`{COMMAND_TYPE}`" in TEXT and f"`{REPLY_TYPE}`" in TEXT
    assert str(COMMAND_ID_NAMESPACE) in TEXT
    rows = re.findall(r"^\| `(action|compensation)` \| (\d+) \| `([0-9a-f-]{36})` \|$", TEXT, re.M)
    assert len(rows) == 3
    for kind, attempt, expected in rows:
        assert command_id("0b1d8c9e-7a53-4a53-9d0c-6c3e1f0a2b44", "debit-buyer", kind, int(attempt)) == expected
    vectors = re.findall(r"^\| `([^`]+)` \| (\d+)[^|]* \| (\d) \|$", TEXT, re.M)
    assert len(vectors) >= 5
    for key, hashed, partition in vectors:
        assert (murmur2(key.encode()), partition_for(key.encode(), 6)) == (int(hashed), int(partition))


def test_the_limits_are_the_constants() -> None:
    assert (MAX_MESSAGE_BYTES, MAX_SAGA_RESULTS_BYTES) == (256 * 1024, 256 * 1024)
    assert (MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH) == (64 * 1024, 32)
    assert (MAX_RESULT_BYTES, MAX_RESULT_DEPTH, MAX_JSON_DEPTH) == (16 * 1024, 32, 64)
    for phrase in ("256 KiB (262144 bytes)", "64 KiB, 32 levels", "16 KiB, 32 levels", "64 levels"):
        assert phrase in TEXT


def test_the_golden_files_it_names_exist() -> None:
    for name in re.findall(r"golden/([a-z0-9-]+\.json)", TEXT):
        assert (DOCS / "golden" / name).exists(), name
    for pattern in re.findall(r"golden/([a-z-]+)\*\.json", TEXT):
        assert list((DOCS / "golden").glob(f"{pattern}*.json")), pattern
