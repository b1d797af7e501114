"""Generated files stay in step with the models they come from (one source of truth)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from saga_operator import crd
from saga_operator.domain import lifecycle
from saga_protocol import schema
from saga_protocol.messages import Command, CommandKind, Outcome, Reply, now

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("path", "render", "command"),
    [
        ("crds/saga.dev_sagas.yaml", crd.render, "python -m saga_operator.crd > crds/saga.dev_sagas.yaml"),
        (
            "crds/saga.dev_finalizer-policy.yaml",
            crd.render_finalizer_policy,
            "python -m saga_operator.crd --finalizer-policy > crds/saga.dev_finalizer-policy.yaml",
        ),
        ("docs/protocol.schema.json", schema.render, "python -m saga_protocol.schema > docs/protocol.schema.json"),
    ],
)
def test_generated_file_matches_its_models(path: str, render: object, command: str) -> None:
    assert callable(render)
    committed = (REPO / path).read_text()
    assert committed == render(), f"{path} drifted from the models: run `make generate` ({command})"


def test_step_lifecycle_diagram_in_the_architecture_doc_matches_the_table() -> None:
    committed = lifecycle.generated_block((REPO / "docs/architecture.md").read_text())
    assert committed == lifecycle.mermaid(), (
        "docs/architecture.md: the step lifecycle diagram drifted from saga_operator.domain.lifecycle.MOVES: "
        "run `make generate` (python -m saga_operator.domain.lifecycle --mermaid --into docs/architecture.md)"
    )


def test_the_diagram_is_written_between_the_markers_and_nowhere_else(tmp_path: Path) -> None:
    document = tmp_path / "doc.md"
    document.write_text(f"before\n{lifecycle.BEGIN_MARKER}\nstale\n{lifecycle.END_MARKER}\nafter\n")
    lifecycle.main(["--mermaid", "--into", str(document)])
    written = document.read_text()
    assert written == f"before\n{lifecycle.BEGIN_MARKER}\n{lifecycle.mermaid()}{lifecycle.END_MARKER}\nafter\n"
    lifecycle.main(["--mermaid", "--into", str(document)])
    assert document.read_text() == written
    with pytest.raises(ValueError, match="step-lifecycle"):
        lifecycle.with_diagram("no markers here")


def test_protocol_schema_accepts_what_the_models_write_and_refuses_the_rest() -> None:
    document = json.loads((REPO / "docs/protocol.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    command = Command(
        message_id="m-1",
        saga_uid="uid-1",
        saga_namespace="default",
        saga_name="buy-1",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        action="debit",
        attempt=1,
        idempotency_key="uid-1/debit-buyer",
        payload={"buyer": "alice"},
        reply_topic="saga.replies",
        sent_at=now(),
    )
    reply = Reply(
        message_id="m-2",
        command_id="m-1",
        saga_uid="uid-1",
        step="debit-buyer",
        kind=CommandKind.ACTION,
        attempt=1,
        idempotency_key="uid-1/debit-buyer",
        participant="users",
        outcome=Outcome.FAILED,
        error={"reason": "InsufficientFunds", "message": "bob has 500 cents"},
        sent_at=now(),
    )
    for model in (command, reply):
        jsonschema.validate(json.loads(model.model_dump_json(by_alias=True, exclude_none=True)), document)
    broken = json.loads(command.model_dump_json(by_alias=True))
    broken["attempt"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, document)
