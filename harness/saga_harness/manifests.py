"""Saga manifests, as a user writes them: the one builder of the world, the demo, the chaos run and the
benchmark.

* `saga_manifest`: any saga, its steps given as (name, participant, action, compensation);
* `buy_video_saga`: the seed's saga (record the purchase, debit the buyer, credit the seller's agent),
  addressed to the buy-video services by their own names or by the names a world gave them.

Optional fields (a namespace, a retry policy, `spec.abort`) are written only when given, so that a
manifest says no more than its caller asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

#: The Saga CRD's apiVersion and kind (crds/saga.dev_sagas.yaml): what a user writes in a manifest.
API_VERSION: Final = "saga.dev/v1alpha1"
KIND: Final = "Saga"

#: One step: (name, participant, action, compensation).
Step = tuple[str, str, str, str]

#: The buy-video saga's steps, in order, each addressed to its service: (name, service, action, compensation).
BUY_VIDEO_STEPS: Final[tuple[Step, ...]] = (
    ("record-purchase", "videos", "record-purchase", "remove-purchase"),
    ("debit-buyer", "users", "debit", "refund"),
    ("credit-agent", "agents", "credit", "reverse-credit"),
)


def saga_manifest(
    name: str,
    payload: Mapping[str, Any],
    steps: Iterable[Step],
    *,
    timeout_seconds: int,
    namespace: str | None = None,
    retry: Mapping[str, int] | None = None,
    abort: bool | None = None,
) -> dict[str, Any]:
    """A Saga with these steps, each with the same timeout and (if given) the same retry policy."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    policy = None if retry is None else dict(retry)
    body: list[dict[str, Any]] = []
    for step, participant, action, compensation in steps:
        entry: dict[str, Any] = {
            "name": step,
            "participant": participant,
            "action": action,
            "compensation": compensation,
            "timeoutSeconds": timeout_seconds,
        }
        if policy is not None:
            entry["retry"] = policy
        body.append(entry)
    spec: dict[str, Any] = {"payload": dict(payload)}
    if abort is not None:
        spec["abort"] = abort
    spec["steps"] = body
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def buy_video_saga(
    name: str,
    payload: Mapping[str, Any],
    *,
    namespace: str = "default",
    participants: Mapping[str, str] | None = None,
    timeout_seconds: int = 10,
    retry: Mapping[str, int] | None = None,
    abort: bool = False,
) -> dict[str, Any]:
    """The seed's saga: record the purchase, debit the buyer, credit the seller's agent. `participants`:
    service -> the participant name it runs under (default: the service's own name)."""
    names = participants or {}
    return saga_manifest(
        name,
        payload,
        [(step, names.get(service, service), action, undo) for step, service, action, undo in BUY_VIDEO_STEPS],
        namespace=namespace,
        timeout_seconds=timeout_seconds,
        retry=retry or {"limit": 3, "backoffSeconds": 1, "maxBackoffSeconds": 5},
        abort=abort,
    )
