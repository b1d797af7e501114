"""Generate the Saga CustomResourceDefinition from the pydantic models (the one source of truth),
and the admission policy that gives every new Saga the operator's finalizer.

`python -m saga_operator.crd > crds/saga.dev_sagas.yaml` and
`python -m saga_operator.crd --finalizer-policy > crds/saga.dev_finalizer-policy.yaml` (both: `make
generate`); a test fails when a file in `crds/` differs from what this prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from saga_operator.domain.model import FINALIZER, GROUP, KIND, PLURAL, VERSION, SagaSpec, SagaStatus

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
                        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
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


FINALIZER_POLICY = f"{PLURAL}.{GROUP}-finalizer"


def finalizer_policy() -> list[dict[str, Any]]:
    """A MutatingAdmissionPolicy (and its binding) adding the finalizer when a Saga is created.

    Without it the operator adds the finalizer with a PATCH of its own before the saga's first step: a
    third of its API writes for a 3-step saga (docs/performance.md). The operator still adds it to any
    Saga that lacks it (the policy not installed, or skipped: failurePolicy Ignore never blocks a create).
    """
    add_to_list = f'[JSONPatch{{op: "add", path: "/metadata/finalizers/-", value: "{FINALIZER}"}}]'
    new_list = f'[JSONPatch{{op: "add", path: "/metadata/finalizers", value: ["{FINALIZER}"]}}]'
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": FINALIZER_POLICY},
        "spec": {
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE"], "resources": [PLURAL]}
                ]
            },
            "matchConditions": [
                {
                    "name": "finalizer-missing",
                    "expression": f'!has(object.metadata.finalizers) || !("{FINALIZER}" in object.metadata.finalizers)',
                }
            ],
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {"expression": f"has(object.metadata.finalizers) ? {add_to_list} : {new_list}"},
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": FINALIZER_POLICY},
        # Every namespace, as the operator of manifests/base watches every namespace. An operator
        # watching one namespace wants spec.matchResources.namespaceSelector here: a Saga no operator
        # watches would otherwise carry a finalizer nobody removes (docs/operations.md).
        "spec": {"policyName": FINALIZER_POLICY},
    }
    return [policy, binding]


_HEADER = "# Generated from the pydantic models by `python -m saga_operator.crd{flag}`: edit those, not this.\n"


def render() -> str:
    return _HEADER.format(flag="") + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)


def render_finalizer_policy() -> str:
    return _HEADER.format(flag=" --finalizer-policy") + yaml.safe_dump_all(
        finalizer_policy(), sort_keys=False, width=1000
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saga_operator.crd", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--finalizer-policy", action="store_true", help="print the finalizer admission policy instead of the CRD"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(render_finalizer_policy() if args.finalizer_policy else render())


if __name__ == "__main__":
    main()
