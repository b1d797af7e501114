"""The wire format as one JSON Schema document, generated from the models (`make schemas`).

`python -m saga_protocol.schema > docs/protocol.schema.json`; a test fails when the file drifts.
Participants in other languages validate commands and build replies against it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import models_json_schema

from saga_protocol.messages import COMMAND_TYPE, REPLY_TYPE, Command, Reply

SCHEMA_ID = "https://saga.dev/schemas/protocol/v2.json"


def protocol_schema() -> dict[str, Any]:
    _, top = models_json_schema(
        [(Command, "validation"), (Reply, "validation")],
        by_alias=True,
        title="saga-operator wire protocol v2",
        ref_template="#/$defs/{model}",
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "description": (
            f"Kafka message bodies. Commands (ce_type {COMMAND_TYPE}) go to saga.commands.<participant>; "
            f"replies (ce_type {REPLY_TYPE}) go to saga.replies.<participant>. Validate a body against "
            "#/$defs/Command or #/$defs/Reply. Readers ignore properties they do not know (forward "
            "compatibility); the limits on payload and result sizes and on nesting are in docs/protocol.md."
        ),
        **{k: v for k, v in top.items() if k != "$schema"},
        "anyOf": [{"$ref": "#/$defs/Command"}, {"$ref": "#/$defs/Reply"}],
    }


def render() -> str:
    return json.dumps(protocol_schema(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
