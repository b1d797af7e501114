"""In-memory stand-ins for the coordinator's ports: the Kubernetes API (`SagaStore`) and the command sender.

`FakeStore` keeps Saga bodies as an API server does, as far as the coordinator can tell: every write bumps
`metadata.resourceVersion`; a write carrying another one is refused with `Conflict` (409); a saga that does not
exist, or exists again under its name with another uid, is `Gone` (404); a deletion request on a saga with
finalizers only sets `deletionTimestamp`, and the saga disappears when its last finalizer is removed.

Both fakes write to one `journal`, so a test can read the order in which the log was written and the effects
happened. The real API server and Kafka are in tests/e2e; these are for the shell's own rules.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError

from saga_operator.adapters.kube import Conflict, Gone, SagaRef, status_patch
from saga_operator.domain.model import SagaSpec, SagaStatus
from saga_operator.runtime.ports import SagaStore
from saga_protocol import Command


@dataclass
class Journal:
    """What happened, in order: ("status", name, seq), ("finalizers", name, [...]), ("send", step, kind, attempt),
    ("conflict", name), ("gone", name), ("error", name)."""

    entries: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, *entry: Any) -> None:
        self.entries.append(entry)

    def kinds(self) -> list[str]:
        return [str(entry[0]) for entry in self.entries]


class FakeStore:
    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._versions = itertools.count(100)
        self.events: list[tuple[str, str, str, str]] = []  # (saga name, type, reason, message)
        # Run just before the next write is checked: another writer that gets there first.
        self.before_next_write: Callable[[], None] | None = None
        # Raised, one per write, by the next status writes (an API server that errors).
        self.status_write_errors: list[Exception] = []
        #: SagaTemplates by (namespace, name), as stored bodies.
        self.templates: dict[tuple[str, str], dict[str, Any]] = {}

    # ---- what a test does: the user, other writers, the API server itself ------------------------

    def create(
        self,
        name: str,
        spec: SagaSpec,
        namespace: str = "shop",
        finalizers: list[str] | None = None,
        created_at: str | None = None,
    ) -> SagaRef:
        """`created_at`: its creationTimestamp (none: the saga predates any operator process)."""
        ref = SagaRef(namespace, name, str(uuid.uuid4()))
        self._objects[(namespace, name)] = {
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": ref.uid,
                "resourceVersion": self._next_version(),
                "generation": 1,
                "finalizers": list(finalizers or []),
                **({"creationTimestamp": created_at} if created_at else {}),
            },
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        return ref

    def body(self, ref: SagaRef) -> dict[str, Any]:
        """The saga as a watch event would carry it now."""
        return copy.deepcopy(self._stored(ref))

    def exists(self, ref: SagaRef) -> bool:
        stored = self._objects.get((ref.namespace, ref.name))
        return stored is not None and stored["metadata"]["uid"] == ref.uid

    def status(self, ref: SagaRef) -> SagaStatus:
        return SagaStatus.model_validate(self._stored(ref).get("status") or {})

    def finalizers(self, ref: SagaRef) -> list[str]:
        return list(self._stored(ref)["metadata"]["finalizers"])

    def touch(self, ref: SagaRef, label: str = "touched") -> None:
        """Another writer changes the saga's metadata (a label): its resourceVersion moves on."""
        stored = self._stored(ref)
        stored["metadata"].setdefault("labels", {})[label] = "yes"
        stored["metadata"]["resourceVersion"] = self._next_version()

    def replace_status(self, ref: SagaRef, status: SagaStatus) -> None:
        """Another writer (a second replica) stores a status of its own."""
        stored = self._stored(ref)
        stored["status"] = status.to_patch()
        stored["metadata"]["resourceVersion"] = self._next_version()

    def replace_raw_status(self, ref: SagaRef, raw: Any) -> None:
        """Someone with write access to the status subresource stores whatever they like."""
        stored = self._stored(ref)
        stored["status"] = copy.deepcopy(raw)
        stored["metadata"]["resourceVersion"] = self._next_version()

    def replace_spec(self, ref: SagaRef, spec: SagaSpec) -> None:
        """A spec edit (one the admission policies would refuse, as when they are not installed)."""
        stored = self._stored(ref)
        stored["spec"] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        stored["metadata"]["generation"] += 1
        stored["metadata"]["resourceVersion"] = self._next_version()

    def annotate(self, ref: SagaRef, key: str, value: str) -> None:
        stored = self._stored(ref)
        stored["metadata"].setdefault("annotations", {})[key] = value
        stored["metadata"]["resourceVersion"] = self._next_version()

    def request_deletion(self, ref: SagaRef) -> None:
        """kubectl delete: with finalizers the saga stays, marked; without, it is gone at once."""
        stored = self._stored(ref)
        if not stored["metadata"]["finalizers"]:
            del self._objects[(ref.namespace, ref.name)]
            return
        stored["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
        stored["metadata"]["resourceVersion"] = self._next_version()

    def remove(self, ref: SagaRef) -> None:
        """The saga disappears behind the operator's back (its finalizer removed by hand, then deleted)."""
        del self._objects[(ref.namespace, ref.name)]

    # ---- the port -----------------------------------------------------------------------------

    async def get_saga(self, ref: SagaRef) -> dict[str, Any]:
        if not self.exists(ref):
            raise Gone(ref.name)
        return self.body(ref)

    async def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.templates.get((namespace, name))

    async def write_status(self, ref: SagaRef, status: SagaStatus, resource_version: str | None) -> dict[str, Any]:
        if self.status_write_errors:
            self.journal.add("error", ref.name)
            raise self.status_write_errors.pop(0)
        stored = self._checked_for_write(ref, resource_version)
        # A JSON merge patch of the whole status: the keys sent as null are deleted.
        patch = status_patch(status, resource_version)["status"]
        stored["status"] = {key: value for key, value in patch.items() if value is not None}
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.journal.add("status", ref.name, status.seq)
        return self.body(ref)

    async def set_finalizers(
        self, ref: SagaRef, finalizers: list[str], resource_version: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        stored = self._checked_for_write(ref, resource_version)
        meta = stored["metadata"]
        if "deletionTimestamp" in meta and set(finalizers) - set(meta["finalizers"]):
            raise ValueError("Forbidden: no new finalizers can be added if the object is being deleted")
        meta["finalizers"] = list(finalizers)
        if labels:
            meta["labels"] = {**(meta.get("labels") or {}), **labels}
        meta["resourceVersion"] = self._next_version()
        self.journal.add("finalizers", ref.name, list(finalizers))
        body = self.body(ref)
        if "deletionTimestamp" in meta and not finalizers:
            del self._objects[(ref.namespace, ref.name)]  # the API server deletes it; the PATCH still answers 200
        return body

    async def delete_saga(self, ref: SagaRef) -> None:
        if not self.exists(ref):
            raise Gone(ref.name)
        self.journal.add("delete", ref.name)
        self.request_deletion(ref)

    async def post_event(self, ref: SagaRef, type_: str, reason: str, message: str, at: datetime | None = None) -> None:
        self.events.append((ref.name, type_, reason, message))

    # ---- internals ----------------------------------------------------------------------------

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _stored(self, ref: SagaRef) -> dict[str, Any]:
        if not self.exists(ref):
            raise KeyError(f"no saga {ref.namespace}/{ref.name} with uid {ref.uid}")
        return self._objects[(ref.namespace, ref.name)]

    def _checked_for_write(self, ref: SagaRef, resource_version: str | None) -> dict[str, Any]:
        if self.before_next_write is not None:
            interloper, self.before_next_write = self.before_next_write, None
            interloper()
        stored = self._objects.get((ref.namespace, ref.name))
        if stored is None:  # a PATCH goes by name: a saga created again under it would be patched (or 409)
            self.journal.add("gone", ref.name)
            raise Gone(ref.name)
        if resource_version is not None and stored["metadata"]["resourceVersion"] != resource_version:
            self.journal.add("conflict", ref.name)
            raise Conflict(ref.name)
        return stored


def _is_a_saga_store(store: FakeStore) -> SagaStore:
    return store  # mypy checks here that the fake satisfies the port


@dataclass
class Sent:
    topic: str
    command: Command
    # The saga's status as stored at the moment the command left: what a crash right then would resume from.
    stored_status: SagaStatus | None
    # The trace context the command's headers carry (None: tracing off).
    trace: Mapping[str, str] | None = None


class FakeSender:
    """The command producer (`send`) and topic creation (`ensure_topics`) the coordinator is given."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.sent: list[Sent] = []
        self.topics: list[str] = []
        self.fail = False  # the broker is down
        self.too_large: set[str] = set()  # steps whose commands the producer refuses for their size

    async def send(self, topic: str, command: Command, trace: Mapping[str, str] | None = None) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        if command.step in self.too_large:
            raise MessageSizeTooLargeError("The message is 2000000 bytes when serialized")
        ref = SagaRef(command.saga_namespace, command.saga_name, command.saga_uid)
        stored = self.store.status(ref) if self.store.exists(ref) else None
        self.sent.append(Sent(topic, command, stored, trace))
        self.store.journal.add("send", command.step, command.kind.value, command.attempt)

    async def ensure_topics(self, topics: list[str]) -> None:
        self.topics.extend(topics)

    def steps(self) -> list[tuple[str, str, int]]:
        return [(s.command.step, s.command.kind.value, s.command.attempt) for s in self.sent]
