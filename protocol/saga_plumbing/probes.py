"""The probe and metrics HTTP server: `/healthz` (alive), `/readyz` (doing its job), `/metrics`.

Each probe is a function that returns None when all is well, or why not (the 503's body). A port
already in use is `PortInUse` at start, which the caller turns into a non-zero exit, so Kubernetes
restarts the pod instead of leaving a process alive that serves nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

Probe = Callable[[], str | None]


class PortInUse(OSError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"cannot serve probes and metrics: {host}:{port} is already in use")
        self.host = host
        self.port = port


class ProbeServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        liveness: Probe,
        readiness: Probe,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.port = port
        self._liveness = liveness
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(self.host, self.port) from exc
            raise
        self._runner = runner
        self.bound_port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        problem = self._liveness()
        return web.Response(text="ok\n") if problem is None else web.Response(status=503, text=f"{problem}\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        problem = self._readiness()
        return web.Response(text="ready\n") if problem is None else web.Response(status=503, text=f"{problem}\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
