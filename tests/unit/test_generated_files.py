"""Generated files stay in step with the models they come from (one source of truth)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import saga_protocol
from saga_operator import admission, crd
from saga_operator.domain import lifecycle
from saga_operator.domain.model import MUTABLE_SPEC_FIELDS, SagaSpec
from saga_protocol import schema
from saga_protocol.messages import Command, CommandKind, Outcome, Reply, now

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("path", "render", "command"),
    [
        ("crds/saga.dev_sagas.yaml", crd.render, "python -m saga_operator.crd > crds/saga.dev_sagas.yaml"),
        (
            "crds/saga.dev_participants.yaml",
            crd.render_participants,
            "python -m saga_operator.crd --participants > crds/saga.dev_participants.yaml",
        ),
        (
            "crds/saga.dev_sagatemplates.yaml",
            crd.render_templates,
            "python -m saga_operator.crd --templates > crds/saga.dev_sagatemplates.yaml",
        ),
        (
            "crds/saga.dev_admission-policies.yaml",
            admission.render,
            "python -m saga_operator.admission > crds/saga.dev_admission-policies.yaml",
        ),
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


def _spec_rules() -> list[dict[str, object]]:
    schema = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules: list[dict[str, object]] = schema["properties"]["spec"]["x-kubernetes-validations"]
    return rules


def test_every_spec_field_but_abort_and_the_ttl_is_immutable_by_a_generated_rule() -> None:
    """A field added to SagaSpec later is covered without anyone writing its rule. The TTL may change freely."""
    transition = {str(r["fieldPath"]): r for r in _spec_rules() if "oldSelf" in str(r["rule"])}
    fields = {f".{field.alias or name}" for name, field in SagaSpec.model_fields.items()}
    assert set(transition) == fields - {".ttlSecondsAfterFinished"}
    assert MUTABLE_SPEC_FIELDS == {"abort", "ttl_seconds_after_finished"}
    for path, rule in transition.items():
        if path == ".abort":
            assert "!oldSelf.abort" in str(rule["rule"])  # false -> true only
        else:
            assert f"self{path} == oldSelf{path}" in str(rule["rule"]), path
            assert rule["reason"] == "FieldValueForbidden"


def test_a_new_optional_spec_field_gets_a_rule_that_sees_it_added_and_removed() -> None:
    class Wider(SagaSpec):
        future: int | None = None

    (rule,) = [r for r in crd.immutability_rules(Wider) if r["fieldPath"] == ".future"]
    assert rule["rule"] == "has(oldSelf.future) ? has(self.future) && self.future == oldSelf.future : !has(self.future)"


def test_the_payload_policy_and_the_field_description_use_the_protocols_limits() -> None:
    rendered = admission.render()
    assert f"variables.bytes <= {saga_protocol.MAX_PAYLOAD_BYTES}" in rendered
    assert f"deeper than the saga protocol allows ({saga_protocol.MAX_PAYLOAD_DEPTH} levels" in rendered
    description = SagaSpec.model_fields["payload"].description or ""
    assert f"at most {saga_protocol.MAX_PAYLOAD_BYTES // 1024} KiB" in description


def test_status_writers_are_a_parameter_of_the_generator() -> None:
    default = admission.status_writers_policy()[0]["spec"]["validations"][0]["expression"]
    assert f"['{admission.OPERATOR_USER}']" in default and f"['{admission.STATUS_WRITERS_GROUP}']" in default
    wider = admission.render(status_writers=(admission.OPERATOR_USER, "alice"), status_writer_groups=("ops",))
    assert "'system:serviceaccount:saga-system:saga-operator', 'alice'" in wider and "['ops']" in wider
    assert wider.startswith("# Generated by `python -m saga_operator.admission --status-writer alice")
    moved = admission.render(status_writers=("system:serviceaccount:ops:saga",))
    assert moved.startswith(
        "# Generated by `python -m saga_operator.admission --operator system:serviceaccount:ops:saga`"
    )
    assert admission.OPERATOR_USER not in moved
    with pytest.raises(ValueError, match="not a user or group name"):
        admission.status_writers_policy(users=("o'brien",))
