"""The plugin's access to the cluster: the official Kubernetes client, configured as kubectl is.

KUBECONFIG (or ~/.kube/config), `--kubeconfig`, `--context`; the namespace is `-n`, else the context's,
else `default`. The imperative shell of the plugin: everything else is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from saga_operator.domain.model import GROUP, PLURAL, RETRY_ANNOTATION, VERSION


class PluginError(Exception):
    """Something to tell the user, with exit status 1."""


@dataclass
class Cluster:
    objects: client.CustomObjectsApi
    core: client.CoreV1Api
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
        try:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}") from exc
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        default = (chosen or {}).get("context", {}).get("namespace") or "default"
        return cls(client.CustomObjectsApi(api), client.CoreV1Api(api), namespace or default)

    def _call(self, what: str, name: str | None, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], fn(*args, **kwargs))
        except ApiException as exc:
            if exc.status == 404 and name is not None:
                raise PluginError(f'saga "{name}" not found in namespace "{self.namespace}"') from exc
            raise PluginError(f"{what}: {exc.status} {exc.reason}: {_api_message(exc)}") from exc

    def get(self, name: str) -> dict[str, Any]:
        return self._call(
            "get", name, self.objects.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name
        )

    def sagas(self, all_namespaces: bool, selector: str | None) -> list[dict[str, Any]]:
        options = {"label_selector": selector} if selector else {}
        if all_namespaces:
            body = self._call("list", None, self.objects.list_cluster_custom_object, GROUP, VERSION, PLURAL, **options)
        else:
            body = self._call(
                "list",
                None,
                self.objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                **options,
            )
        return cast(list[dict[str, Any]], body.get("items", []))

    def abort(self, name: str) -> dict[str, Any]:
        return self._patch(name, {"spec": {"abort": True}})

    def retry(self, name: str, token: str) -> dict[str, Any]:
        return self._patch(name, {"metadata": {"annotations": {RETRY_ANNOTATION: token}}})

    def _patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        # A dict body is sent as a JSON merge patch by the client for custom objects.
        return self._call(
            "patch",
            name,
            self.objects.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            body,
        )

    def events(self, saga: dict[str, Any]) -> list[Any]:
        """The Events about this saga (this uid: not an earlier saga of the same name), oldest first."""
        meta = saga["metadata"]
        try:
            found = self.core.list_namespaced_event(
                meta.get("namespace", self.namespace),
                field_selector=f"involvedObject.kind=Saga,involvedObject.name={meta['name']}",
            )
        except ApiException:
            return []  # Events are a help, not the answer: a user who may not list them still gets the rest
        items = [e for e in found.items if e.involved_object.uid in (None, meta.get("uid"))]
        return sorted(items, key=_when)


def _when(event: Any) -> tuple[float, int]:
    """An Event's time, then its resourceVersion: the times have whole seconds, and the store orders the writes
    of one second as they happened (an Event updated later, its count raised, moves to its latest write)."""
    at = event.last_timestamp or event.event_time or event.first_timestamp or event.metadata.creation_timestamp
    try:
        version = int(event.metadata.resource_version or 0)
    except ValueError:
        version = 0
    return (at.timestamp() if at is not None else 0.0, version)


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message", exc.body))
    except ValueError:
        return str(exc.body)
