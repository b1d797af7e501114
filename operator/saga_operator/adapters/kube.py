"""The Kubernetes side: read Sagas, write their status with compare-and-set, finalizers, Events; a SagaTemplate's
usage status.

Async (kubernetes_asyncio) because it is called from the Kafka loop: a blocking client would stall
the event loop and with it the consumer's heartbeats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from saga_operator.domain.model import GROUP, KIND, PLURAL, VERSION, SagaStatus
from saga_operator.domain.template import TEMPLATE_PLURAL, SagaTemplateStatus, template_status_patch

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Custom resources take JSON merge patches (no strategic merge); the client must be told.
_MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
# Fix (chaos run, docs/chaos.md): without a timeout a request to an API server that stops answering
# (frozen, or gone behind a partition that sends no RST) waits forever, holding its saga's lock and,
# through it, the reply pump. A write that times out may still have landed; the next one carries the
# same resourceVersion, gets 409 and re-reads, as for any other conflict.
REQUEST_TIMEOUT = 30.0
_TIMEOUT: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT}
LIST_PAGE = 500
# As kubernetes_asyncio sets it: a watch event or a listing page can be larger than aiohttp's default buffer.
_READ_BUFSIZE = 2**21


#: What a request to an API server that is away, restarting or overloaded raises: retried with backoff.
#: ApiException as a whole: kubernetes_asyncio has one type for every status (a 403 at start-up is often RBAC
#: that has not reached the API server yet), and a write's 409 and 404 are Conflict and Gone instead.
TRANSIENT_API_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)


_TOO_LARGE_TEXTS = ("request is too large", "request entity too large")


def is_too_large(exc: ApiException) -> bool:
    """A write refused for its size: 413, or etcd's `etcdserver: request is too large` (a 500 or a 422 naming it)."""
    if exc.status == 413:
        return True
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    text = f"{exc.reason or ''} {body}".lower()
    return exc.status in (422, 500) and any(t in text for t in _TOO_LARGE_TEXTS)


class Conflict(Exception):
    """The object changed since it was read: re-read it and apply the transition again."""


class Gone(Exception):
    """The object no longer exists."""


class ListingExpired(Exception):
    """A paged listing's continue token expired (the API server compacted past it)."""


@dataclass(frozen=True)
class SagaRef:
    namespace: str
    name: str
    uid: str


def status_patch(status: SagaStatus, resource_version: str | None) -> dict[str, Any]:
    """A JSON merge patch that replaces the status and fails with 409 if the object moved on.

    Top-level fields that became unset are sent as null (merge patch deletes them); lists are
    replaced whole by merge patch, so nested records need no such care."""
    body = status.to_patch()
    for name, info in SagaStatus.model_fields.items():
        key = info.alias or name
        body.setdefault(key, None)
    patch: dict[str, Any] = {"status": body}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch


class KubeClient:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self.writes = 0  # status and metadata writes: the number the benchmarks care about

    @classmethod
    async def connect(cls, kubeconfig: str | None, proxy_from_env: bool = False) -> KubeClient:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        # Fix (benchmark, docs/performance.md): was 256. A batch of up to 500 replies applied in parallel
        # opened a TLS connection per concurrent PATCH, and kept them all: each costs ~0.3 MiB (asyncio's
        # 256 KiB SSL buffer, OpenSSL's own), +60 MiB RSS with 5,000 Sagas. The API server handles a few
        # requests per core at a time anyway; 64 (= RESUME_CONCURRENCY) queue here instead of there.
        configuration.connection_pool_maxsize = 64
        api_client = client.ApiClient(configuration)
        if not proxy_from_env:
            _stop_environment_lookups(api_client)
        return cls(api_client)

    async def close(self) -> None:
        await self._api_client.close()

    async def list_saga_page(self, namespace: str, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page (up to LIST_PAGE Sagas) of a listing and the token for the next, None after the last.

        Paged so the operator never holds every body at once (docs/performance.md). A token too old to
        continue (410 Gone) raises ListingExpired: list again from the start."""
        kwargs: dict[str, Any] = {"limit": LIST_PAGE, **_TIMEOUT}
        if token:
            kwargs["_continue"] = token
        try:
            if namespace:
                page = await self._objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
            else:
                page = await self._objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        except ApiException as exc:
            if exc.status == 410 and token:
                raise ListingExpired(token) from None
            raise
        return page.get("items", []), page.get("metadata", {}).get("continue") or None

    async def get_saga(self, ref: SagaRef) -> dict[str, Any]:
        try:
            body: dict[str, Any] = await self._objects.get_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, ref.name, **_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise Gone(ref.name) from None
            raise
        if body["metadata"]["uid"] != ref.uid:
            raise Gone(ref.name)  # deleted and created again under the same name: another saga
        return body

    async def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A SagaTemplate as stored now (None: there is none), read when a saga of it starts."""
        try:
            body: dict[str, Any] = await self._objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, TEMPLATE_PLURAL, name, **_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    async def write_template_status(self, namespace: str, name: str, status: SagaTemplateStatus) -> None:
        """One merge PATCH of a SagaTemplate's status subresource (not compare-and-set: it is recomputed whole, by one
        replica); raises Gone when there is no such template."""
        self.writes += 1
        try:
            await self._objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, TEMPLATE_PLURAL, name, template_status_patch(status), **_MERGE, **_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise Gone(name) from None
            raise

    async def write_status(self, ref: SagaRef, status: SagaStatus, resource_version: str | None) -> dict[str, Any]:
        """One PATCH of the status subresource; raises Conflict when resource_version is stale."""
        self.writes += 1
        try:
            body: dict[str, Any] = await self._objects.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.name,
                status_patch(status, resource_version),
                **_MERGE,
                **_TIMEOUT,
            )
        except ApiException as exc:
            raise _translate(exc, ref) from None
        return body

    async def set_finalizers(
        self, ref: SagaRef, finalizers: list[str], resource_version: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self.writes += 1
        meta: dict[str, Any] = {"finalizers": finalizers, "resourceVersion": resource_version}
        if labels:
            meta["labels"] = labels  # merged into the saga's labels: the others stay
        patch = {"metadata": meta}
        try:
            body: dict[str, Any] = await self._objects.patch_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, ref.name, patch, **_MERGE, **_TIMEOUT
            )
        except ApiException as exc:
            raise _translate(exc, ref) from None
        return body

    async def delete_saga(self, ref: SagaRef) -> None:
        """Ask for the saga's deletion (its finalizer then holds it until the operator lets it go); only this
        very saga (a uid precondition), not one created again under its name. Raises Gone."""
        self.writes += 1
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=ref.uid))
        try:
            await self._objects.delete_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, ref.name, body=options, **_TIMEOUT
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or another saga under the name (the precondition failed)
                raise Gone(ref.name) from None
            raise

    async def post_event(self, ref: SagaRef, type_: str, reason: str, message: str, at: datetime | None = None) -> None:
        """One Event that happened `at`. Named `<saga>.<at in ns, hex>` as client-go's recorder names them: the API
        lists Events by name, so this is the order they happened in, and `kubectl describe`, which sorts them by
        lastTimestamp (whole seconds), keeps that order within a second (before, CompensationStarted could be
        listed above the StepRefused that caused it). eventTime keeps the microseconds."""
        when = (at or datetime.now(UTC)).astimezone(UTC)
        nanos = (when - _EPOCH) // timedelta(microseconds=1) * 1000  # exact: no float on the way
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{ref.name[:236]}.{nanos:x}", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=ref.name, namespace=ref.namespace, uid=ref.uid
            ),
            type=type_,
            reason=reason,
            action=reason,
            message=message[:1024],
            first_timestamp=when,
            last_timestamp=when,
            # A MicroTime: always six decimals (isoformat would drop them at .000000, which the API refuses).
            event_time=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),  # type: ignore[arg-type]  # sent as is
            count=1,
            source=client.V1EventSource(component="saga-operator"),
            reporting_component="saga.dev/saga-operator",
            reporting_instance="saga-operator",
        )
        await self._core.create_namespaced_event(ref.namespace, event, **_TIMEOUT)

    async def ping(self, seconds: float) -> None:
        """GET /version: does the API server answer at all? (the readiness probe)"""
        await client.VersionApi(self._api_client).get_code(_request_timeout=seconds)


def _stop_environment_lookups(api_client: client.ApiClient) -> None:
    """Move the client's connection pool into a session that does not trust the environment.

    kubernetes_asyncio creates its aiohttp session with trust_env=True, so before every request aiohttp
    reads ~/.netrc in a worker thread and looks at the proxy variables: 10-20 % of the operator's CPU per
    step (A/B, docs/performance.md). The connector (TLS context, client certificate, pool size) is kept.
    """
    rest = api_client.rest_client
    trusting: aiohttp.ClientSession = rest.pool_manager
    connector = trusting.connector
    trusting.detach()
    rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=_READ_BUFSIZE)


def _translate(exc: ApiException, ref: SagaRef) -> Exception:
    if exc.status == 409:
        return Conflict(ref.name)
    if exc.status == 404:
        return Gone(ref.name)
    return exc
