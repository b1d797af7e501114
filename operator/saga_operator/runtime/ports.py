"""What the coordinator needs from Kubernetes, and nothing more: its port.

`saga_operator.adapters.kube.KubeClient` is the implementation that talks to an API server; the unit tests use an
in-memory one (tests/unit/fakes.py). Listing Sagas is not here: the start-up listing and the watch belong to the
app (runtime/app.py), which hands each body to `Coordinator.observe`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from saga_operator.adapters.kube import SagaRef
from saga_operator.domain.model import SagaStatus


class SagaStore(Protocol):
    """The Saga objects of the cluster, as their JSON bodies (`metadata`, `spec`, `status`).

    Writes are compare-and-set on `metadata.resourceVersion`: a stale one raises
    `saga_operator.adapters.kube.Conflict` (409). A saga that no longer exists, or exists again under the same
    name with another uid, raises `saga_operator.adapters.kube.Gone` (404). Each write returns the body as stored,
    with its new resourceVersion.
    """

    async def get_saga(self, ref: SagaRef) -> dict[str, Any]:
        """The saga as stored now; raises Gone."""
        ...

    async def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SagaTemplate `name` of `namespace` as stored now; None when there is none."""
        ...

    async def write_status(self, ref: SagaRef, status: SagaStatus, resource_version: str | None) -> dict[str, Any]:
        """Replace the status subresource if the object is still at `resource_version` (None: unconditionally);
        raises Conflict, Gone."""
        ...

    async def set_finalizers(
        self, ref: SagaRef, finalizers: list[str], resource_version: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Replace `metadata.finalizers` (and set `labels`, the others kept) if the object is still at
        `resource_version`; raises Conflict, Gone. Removing the last finalizer of a saga whose deletion was
        requested lets the API server delete it."""
        ...

    async def delete_saga(self, ref: SagaRef) -> None:
        """Ask the API server to delete this saga (its uid, not another under the same name); raises Gone."""
        ...

    async def post_event(self, ref: SagaRef, type_: str, reason: str, message: str, at: datetime | None = None) -> None:
        """Record a Kubernetes Event about the saga that happened `at` (best effort: the caller counts a failure and
        moves on)."""
        ...


if TYPE_CHECKING:
    from saga_operator.adapters.kube import KubeClient

    def _kube_client_is_a_saga_store(kube: KubeClient) -> SagaStore:
        return kube  # mypy checks here that KubeClient satisfies the port
