"""Generate the Saga CustomResourceDefinition from the pydantic models (the one source of truth).

`python -m saga_operator.crd > crds/saga.dev_sagas.yaml` (or `make crds`); a test fails when the file
in `crds/` differs from what this prints.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from saga_operator.domain.model import GROUP, KIND, PLURAL, VERSION, SagaSpec, SagaStatus

_DROP = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON Schema into a Kubernetes structural schema: refs inlined, optional values
    without a null branch (unset fields are absent, never null), free-form objects marked as such."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            return _structural({**branches[0], **rest}, defs)
    out: dict[str, Any] = {}
    free_form = node.get("type") == "object" and "properties" not in node and node.get("additionalProperties", True)
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "format" and value != "date-time":
            continue
        else:
            out[key] = _structural(value, defs)
    if free_form:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _schema(model: type[SagaSpec] | type[SagaStatus]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return result


def custom_resource_definition() -> dict[str, Any]:
    spec_schema = _schema(SagaSpec)
    status_schema = _schema(SagaStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["sg"],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Step", "type": "string", "jsonPath": ".status.currentStep"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "A saga: a business transaction split into steps, each with a "
                            "compensation. saga-operator runs the steps and, if one fails, undoes the completed "
                            "ones in reverse order.",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated from the pydantic models by `python -m saga_operator.crd`: edit those, not this.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
