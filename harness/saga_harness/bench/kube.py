"""A lean async client for the benchmark driver: aiohttp with the kubeconfig's credentials.

The driver creates thousands of Sagas, watches them and patches their status as fast as the API server
takes it; a generated client's per-call model handling would make the driver, not the server, the limit.
Credentials come from kubernetes_asyncio's kubeconfig loader (client certificates or a bearer token).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from .operator_internals import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


async def load_configuration(kubeconfig: Path) -> k8s_client.Configuration:
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return configuration


class Kube:
    def __init__(self, session: aiohttp.ClientSession, host: str) -> None:
        self.session = session
        self.host = host.rstrip("/")

    @classmethod
    async def connect(cls, kubeconfig: Path, connections: int) -> Kube:
        configuration = await load_configuration(kubeconfig)
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        headers = {"Accept": "application/json"}
        token = await configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        connector = aiohttp.TCPConnector(ssl=context, limit=connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
        return cls(
            aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout), str(configuration.host)
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        headers = {"Content-Type": content_type} if body is not None else None
        async with self.session.request(method, self.host + path, data=body, headers=headers) as response:
            raw = await response.read()
            if response.status >= 300:
                raise KubeError(response.status, method, path, raw.decode(errors="replace"))
            return json.loads(raw) if raw else None

    async def text(self, path: str) -> str:
        async with self.session.get(self.host + path) as response:
            raw = await response.read()
            if response.status >= 300:
                raise KubeError(response.status, "GET", path, raw.decode(errors="replace"))
            return raw.decode()

    # ---- Sagas ------------------------------------------------------------------------------------

    @staticmethod
    def sagas_path(namespace: str, name: str = "", subresource: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    async def create_saga(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = await self.request("POST", self.sagas_path(namespace), json.dumps(manifest).encode())
        return body

    async def patch_status(self, namespace: str, name: str, patch: bytes) -> dict[str, Any]:
        body: dict[str, Any] = await self.request(
            "PATCH", self.sagas_path(namespace, name, "status"), patch, content_type=MERGE_PATCH
        )
        return body

    async def list_sagas(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = "?limit=500" + (f"&continue={token}" if token else "")
            page = await self.request("GET", self.sagas_path(namespace) + query)
            items.extend(page.get("items", []))
            token = page.get("metadata", {}).get("continue", "")
            if not token:
                return items, str(page["metadata"]["resourceVersion"])

    async def watch_sagas(self, namespace: str, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) for every change after `resource_version`, until the server ends the stream."""
        path = self.sagas_path(namespace) + f"?watch=1&resourceVersion={resource_version}&timeoutSeconds=3600"
        async with self.session.get(self.host + path) as response:
            if response.status >= 300:
                raise KubeError(response.status, "GET", path, (await response.read()).decode(errors="replace"))
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield str(event["type"]), event["object"]

    # ---- namespaces and metrics -------------------------------------------------------------------

    async def create_namespace(self, name: str) -> None:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        try:
            await self.request("POST", "/api/v1/namespaces", json.dumps(manifest).encode())
        except KubeError as exc:
            if exc.status != 409:
                raise

    async def delete_namespace(self, name: str) -> None:
        try:
            await self.request("DELETE", f"/api/v1/namespaces/{name}")
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def namespace_exists(self, name: str) -> bool:
        try:
            await self.request("GET", f"/api/v1/namespaces/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def server_version(self) -> str:
        body = await self.request("GET", "/version")
        return str(body.get("gitVersion", "unknown"))

    async def write_requests(self) -> dict[str, float]:
        """apiserver_request_total for writes on sagas and events, by 'resource verb subresource code'."""
        text = await self.text("/metrics")
        return parse_write_requests(text)


def parse_write_requests(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels: dict[str, str] = {}
        for part in line[line.index("{") + 1 : line.rindex("}")].split(","):
            if "=" in part:
                key, value = part.split("=", 1)
                labels[key] = value.strip('"')
        resource = labels.get("resource", "")
        verb = labels.get("verb", "")
        if resource not in (PLURAL, "events") or verb not in ("POST", "PATCH", "PUT", "DELETE", "DELETECOLLECTION"):
            continue
        if resource == PLURAL and labels.get("group") not in (None, GROUP):
            continue
        key = f"{resource} {verb} {labels.get('subresource') or 'main'} {labels.get('code', '')}"
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts
