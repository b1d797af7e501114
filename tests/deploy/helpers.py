"""Helpers for the deployment tests: building the kustomizations, reading the built objects, applying
them to the stack's API server."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from saga_testenv import run_kubectl

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
EXAMPLES = REPO / "examples"
#: Every kustomization: the bases, the admission policies, the demo participants' Participant objects and
#: the kind overlay.
KUSTOMIZATIONS = (
    "base",
    "admission",
    "admission/finalizer",
    "kafka",
    "participants",
    "participants/registration",
    "overlays/kind",
)
NAMESPACE = "saga-system"
OPERATOR_SA = "saga-operator"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@functools.cache
def kustomize(path: str) -> str:
    """`kubectl kustomize manifests/<path>`: the YAML `kubectl apply -k` would send (no server needed)."""
    result = run_kubectl(["kustomize", str(MANIFESTS / path)])
    assert result.returncode == 0, f"kubectl kustomize manifests/{path} failed:\n{result.stderr}"
    return result.stdout


def objects(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kustomize(path)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {[(d['kind'], d['metadata']['name']) for d in docs]}")


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def ok(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, f"{what} failed (exit {result.returncode}):\n{result.stderr}{result.stdout}"
    return result.stdout


def apply_docs(kubectl: Kubectl, docs: list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess[str]:
    listing = {"apiVersion": "v1", "kind": "List", "items": docs}
    return kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump(listing, sort_keys=False))
