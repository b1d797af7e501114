"""The local stack: etcd, kube-apiserver, kube-controller-manager and a single-node KRaft Kafka broker.

``Stack(directory).start()`` builds what the cache lacks, generates certificates, starts every server on
127.0.0.1 on free ports, waits until each answers its health check and writes ``kubeconfig``, ``env`` and
``state.json`` into ``directory``. ``StackEndpoints`` is what the rest of the project consumes: the same
attributes describe a stack started here or any cluster and broker named by ``KUBECONFIG`` and
``KAFKA_BOOTSTRAP_SERVERS`` (``StackEndpoints.from_environment()``).

Why kube-controller-manager: without its namespace controller a deleted namespace stays Terminating
forever, and without its garbage collector ownerReferences do nothing. Only those controllers (and the
one that creates each namespace's ``default`` ServiceAccount) run; there is no scheduler and no kubelet,
so Pods are stored but never run.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import yaml

from . import build, certs, procs, versions
from .kafka import run_sync, wait_for_broker
from .kubectl import kubectl_path, run_kubectl

Log = Callable[[str], None]

UNPRIVILEGED_USER = "saga-unprivileged"
ENV_UNPRIVILEGED_USER = "SAGA_TESTENV_UNPRIVILEGED_USER"
ENV_UNPRIVILEGED_TOKEN = "SAGA_TESTENV_UNPRIVILEGED_TOKEN"
CONTEXT = "saga-testenv"

#: Everything a stack writes into its directory; only these are removed before a fresh start.
_OWNED_ENTRIES = (
    "env",
    "state.json",
    "kubeconfig",
    "pki",
    "tokens.csv",
    "etcd",
    "kafka",
    "apiserver",
    "controller-manager",
    "logs",
    "pids",
    "bin",
)


class StackError(RuntimeError):
    pass


class StackAlreadyRunning(StackError):
    pass


def _default_log(message: str) -> None:
    print(f"[testenv] {message}", flush=True)


class StackEndpoints:
    """Where the cluster and the broker are, and who may talk to them.

    ``kubernetes_version`` is the pinned version for a stack started here and None for a foreign cluster;
    ``unprivileged_token`` is None when no unprivileged user is known (a foreign cluster, unless
    ``SAGA_TESTENV_UNPRIVILEGED_TOKEN`` names one).
    """

    managed: bool = False

    def __init__(
        self,
        *,
        kubeconfig: Path,
        kafka_bootstrap: str,
        apiserver_url: str = "",
        unprivileged_user: str | None = None,
        unprivileged_token: str | None = None,
        kubernetes_version: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kafka_bootstrap = kafka_bootstrap
        self.apiserver_url = apiserver_url
        self.unprivileged_user = unprivileged_user
        self.unprivileged_token = unprivileged_token
        self.kubernetes_version = kubernetes_version

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StackEndpoints | None:
        """Endpoints named by ``KUBECONFIG`` and ``KAFKA_BOOTSTRAP_SERVERS``, or None if either is unset."""
        environ = os.environ if environ is None else environ
        kubeconfig = environ.get("KUBECONFIG", "")
        bootstrap = environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not kubeconfig or not bootstrap:
            return None
        # KUBECONFIG may be a list; kubectl merges it. The first file is what we name.
        first = Path(kubeconfig.split(os.pathsep)[0])
        endpoints = cls(
            kubeconfig=first,
            kafka_bootstrap=bootstrap,
            unprivileged_user=environ.get(ENV_UNPRIVILEGED_USER) or None,
            unprivileged_token=environ.get(ENV_UNPRIVILEGED_TOKEN) or None,
        )
        endpoints.apiserver_url = str(endpoints._current_cluster().get("server", ""))
        return endpoints

    def env(self) -> dict[str, str]:
        """Environment variables that point a client (kubectl, kopf, aiokafka) at this stack."""
        out = {"KUBECONFIG": str(self.kubeconfig), "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap}
        if self.unprivileged_token:
            out[ENV_UNPRIVILEGED_USER] = self.unprivileged_user or ""
            out[ENV_UNPRIVILEGED_TOKEN] = self.unprivileged_token
        return out

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = False,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the project's kubectl against this cluster (admin credentials unless ``kubeconfig``)."""
        return run_kubectl(args, kubeconfig=kubeconfig or self.kubeconfig, input=input, check=check, timeout=timeout)

    def _current_cluster(self) -> dict[str, Any]:
        view = run_kubectl(["config", "view", "--raw", "--minify", "-o", "json"], kubeconfig=self.kubeconfig)
        if view.returncode != 0:
            raise StackError(f"cannot read kubeconfig {self.kubeconfig}: {view.stderr.strip()}")
        config = json.loads(view.stdout)
        cluster: dict[str, Any] = config["clusters"][0]["cluster"]
        return cluster

    def token_kubeconfig(self, token: str, path: Path, *, user: str = "token-user") -> Path:
        """Write a kubeconfig for the same cluster (server and CA) that authenticates with ``token``.

        For the unprivileged user, or for a ServiceAccount token from ``kubectl create token``.
        """
        cluster = self._current_cluster()
        if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
            ca_path = Path(cluster.pop("certificate-authority"))
            cluster["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "cluster", "user": user}}],
            "current-context": user,
        }
        _write_private(path, yaml.safe_dump(config, sort_keys=False))
        return path

    def describe(self) -> str:
        lines = [
            f"Kubernetes API server  {self.apiserver_url}"
            + (f"  (v{self.kubernetes_version})" if self.kubernetes_version else ""),
            f"KUBECONFIG             {self.kubeconfig}",
            f"Kafka bootstrap        {self.kafka_bootstrap}",
        ]
        if self.unprivileged_token:
            lines.append(f"unprivileged user      {self.unprivileged_user} (bearer token in the env file)")
        lines.append(f"kubectl                {kubectl_path()}")
        return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kafka_cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: a UUID in URL-safe base64 without padding.

    Like Kafka's own generator it never starts with "-": one id in 64 would, and the storage tool's
    argument parser then reads it as an option ("--cluster-id: expected one argument").
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.kafkaserver.name = kafka.server
logger.kafkaserver.level = info
"""


class Stack(StackEndpoints):
    """A local stack in ``directory``. Use ``with Stack(d) as stack:`` or ``start()``/``stop()``.

    ``detached=False`` (tests): the servers die with this process (PR_SET_PDEATHSIG, even on SIGKILL) and
    are stopped at exit and on SIGTERM/SIGHUP (stopped first, then KeyboardInterrupt is raised so the rest
    of the program unwinds as on Ctrl-C, unless the program had its own handler).
    ``detached=True`` (``make up``): they outlive it; ``Stack.stop_directory`` or
    ``python -m saga_testenv down`` stops them from their pid files.
    """

    managed = True

    def __init__(
        self,
        directory: Path | str,
        *,
        detached: bool = False,
        controller_manager: bool = True,
        log: Log | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.directory = Path(directory).absolute()
        super().__init__(
            kubeconfig=self.directory / "kubeconfig",
            kafka_bootstrap="",
            unprivileged_user=UNPRIVILEGED_USER,
            kubernetes_version=versions.KUBERNETES_VERSION,
        )
        self.detached = detached
        self.controller_manager = controller_manager
        self.log = log or _default_log
        self.startup_timeout = startup_timeout
        self.records: list[procs.ProcessRecord] = []
        self.timings: dict[str, float] = {}
        self._cleanup_installed = False
        self._previous_handlers: dict[int, Any] = {}

    # -------------------------------------------------------------------------------- context manager

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------- start

    def start(self) -> Self:
        running = [r for r in procs.read_records(self.directory) if r.running()]
        if running:
            raise StackAlreadyRunning(
                f"a stack is already running in {self.directory} (pids {', '.join(str(r.pid) for r in running)})"
            )
        artifacts = build.ensure_built(self.log)
        for attempt in (1, 2):
            self._clean_directory()
            if not self.detached:
                self._install_cleanup()
            t0 = time.monotonic()
            try:
                self._start(artifacts, t0)
                break
            except StackError:
                # A free port can be taken by another process between choosing it and the server binding
                # it (other stacks start on this machine too): retry once with new ports.
                conflict = self._port_conflict()
                self.stop()
                if attempt == 1 and conflict:
                    self.log(f"{conflict}: a port was taken meanwhile; starting again on new ports")
                    continue
                self.log(f"start failed; stopped what was started (logs in {self.directory / 'logs'})")
                raise
            except BaseException:
                self.log(f"start interrupted; stopping what was started (logs in {self.directory / 'logs'})")
                self.stop()
                raise
        self.timings["total"] = time.monotonic() - t0
        self._write_state()
        return self

    def _port_conflict(self) -> str | None:
        """The name of a server whose log says its address was in use, if any."""
        for record in self.records:
            tail = procs.log_tail(record, lines=200).lower()
            if "address already in use" in tail or "bind: address" in tail:
                return record.name
        return None

    def _clean_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in _OWNED_ENTRIES:
            path = self.directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> procs.ProcessRecord:
        record = procs.spawn(name, argv, run_dir=self.directory, env=env, die_with_parent=not self.detached)
        self.records.append(record)
        return record

    def _start(self, artifacts: build.Artifacts, t0: float) -> None:
        d = self.directory
        (etcd_client, etcd_peer, api_port, kafka_port, controller_port, kcm_port) = procs.free_ports(6)
        pki = certs.generate(d / "pki")
        self.unprivileged_token = secrets.token_urlsafe(32)
        _write_private(d / "tokens.csv", f'{self.unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER},""\n')
        self.apiserver_url = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(pki)
        self.kafka_bootstrap = f"127.0.0.1:{kafka_port}"

        # Kafka: format the storage directory first (one short JVM run) while etcd and the API server boot.
        kafka_dir = d / "kafka"
        kafka_dir.mkdir()
        props = kafka_dir / "server.properties"
        props.write_text(self._kafka_properties(kafka_port, controller_port, kafka_dir / "data"))
        (kafka_dir / "log4j2.properties").write_text(_LOG4J2)
        java_cp = ["java", *versions.KAFKA_JVM_OPTIONS, "-cp", f"{artifacts.kafka_libs}/*"]
        fmt = self._spawn(
            "kafka-format",
            [
                *java_cp,
                "-Dlog4j2.configurationFile=" + str(kafka_dir / "log4j2.properties"),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                kafka_cluster_id(),
                "-c",
                str(props),
            ],
        )

        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                str(artifacts.etcd),
                "--name=default",
                f"--data-dir={d / 'etcd' / 'data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",  # test data only: fsync on a 2-core box is the slow part
                "--log-level=warn",
            ],
        )
        apiserver_dir = d / "apiserver"
        apiserver_dir.mkdir()
        api = self._spawn(
            "kube-apiserver",
            [
                str(artifacts.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",  # else it looks for a default route, absent offline
                f"--secure-port={api_port}",
                f"--cert-dir={apiserver_dir}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )

        self._wait("kafka-format", fmt, lambda: fmt.exit_code() is not None, t0, record_timing=False)
        if fmt.exit_code() != 0:
            raise StackError(f"formatting Kafka storage failed:\n{procs.log_tail(fmt)}")
        self.records.remove(fmt)
        procs.terminate([fmt], run_dir=d)
        kafka = self._spawn(
            "kafka",
            [*java_cp, "-Dlog4j2.configurationFile=" + str(kafka_dir / "log4j2.properties"), "kafka.Kafka", str(props)],
        )

        self._wait("etcd", etcd, lambda: self._http_ok(f"{etcd_url}/health", ssl_context=None), t0)
        api_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        api_ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self._wait("kube-apiserver", api, lambda: self._http_ok(f"{self.apiserver_url}/readyz", api_ctx), t0)

        kcm: procs.ProcessRecord | None = None
        if self.controller_manager:
            kcm_dir = d / "controller-manager"
            kcm_dir.mkdir()
            kcm = self._spawn(
                "kube-controller-manager",
                [
                    str(artifacts.kube_controller_manager),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--controllers=namespace-controller,garbage-collector-controller,serviceaccount-controller",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={kcm_dir}",
                ],
            )

        bootstrap = self.kafka_bootstrap
        self._wait_kafka(kafka, bootstrap, t0)
        if kcm is not None:
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert from --cert-dir
            self._wait(
                "kube-controller-manager",
                kcm,
                lambda: self._http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure),
                t0,
            )

    def _kafka_properties(self, port: int, controller_port: int, data: Path) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                # the operator creates its topics explicitly; a typo must not create a topic silently
                "auto.create.topics.enable=false",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "num.network.threads=2",
                "num.io.threads=2",
                "",
            ]
        )

    def _write_kubeconfig(self, pki: certs.StackCerts) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT,
                    "cluster": {"server": self.apiserver_url, "certificate-authority-data": _b64(pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": certs.ADMIN_USER,
                    "user": {"client-certificate-data": _b64(pki.admin_cert), "client-key-data": _b64(pki.admin_key)},
                }
            ],
            "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": certs.ADMIN_USER}}],
            "current-context": CONTEXT,
        }
        _write_private(self.kubeconfig, yaml.safe_dump(config, sort_keys=False))

    @staticmethod
    def _http_ok(url: str, ssl_context: ssl.SSLContext | None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2.0, context=ssl_context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _wait(
        self,
        name: str,
        record: procs.ProcessRecord,
        ready: Callable[[], bool],
        t0: float,
        *,
        record_timing: bool = True,
    ) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if ready():
                break
            if not record.running():
                if ready():  # it finished between the two checks (the kafka-format case)
                    break
                raise StackError(
                    f"{name} exited (code {record.exit_code()}) before it was ready; log {record.log}:\n"
                    + procs.log_tail(record)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} not ready after {self.startup_timeout:.0f}s; log {record.log}:\n" + procs.log_tail(record)
                )
            time.sleep(0.1)
        if record_timing:
            self.timings[name] = time.monotonic() - t0
            self.log(f"{name} ready ({self.timings[name]:.1f}s)")

    def _wait_kafka(self, record: procs.ProcessRecord, bootstrap: str, t0: float) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not record.running():
                raise StackError(f"Kafka exited before it was ready; log {record.log}:\n{procs.log_tail(record)}")
            try:
                run_sync(wait_for_broker(bootstrap, timeout_s=5.0))
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"Kafka not ready after {self.startup_timeout:.0f}s ({exc}); log {record.log}:\n"
                        + procs.log_tail(record)
                    ) from exc
        self.timings["kafka"] = time.monotonic() - t0
        self.log(f"kafka ready ({self.timings['kafka']:.1f}s)")

    def _write_state(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig),
            "kafka_bootstrap": self.kafka_bootstrap,
            "apiserver_url": self.apiserver_url,
            "unprivileged_user": self.unprivileged_user,
            "unprivileged_token": self.unprivileged_token,
            "kubernetes_version": self.kubernetes_version,
            "detached": self.detached,
            "timings": self.timings,
            "started_at": time.time(),
        }
        _write_private(self.directory / "state.json", json.dumps(state, indent=2) + "\n")
        lines = [f"export {k}={_shell_quote(v)}" for k, v in self.env().items()]
        # put the project's kubectl (1.37, within the supported skew of the 1.36 server; the machine's own
        # may be older) first on PATH, through a directory that holds nothing else
        bindir = self.directory / "bin"
        bindir.mkdir(exist_ok=True)
        (bindir / "kubectl").symlink_to(kubectl_path())
        lines.append(f'export PATH={_shell_quote(str(bindir))}:"$PATH"')
        _write_private(self.directory / "env", "# written by saga_testenv; source it\n" + "\n".join(lines) + "\n")

    # ----------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop every server of this stack (SIGTERM, then SIGKILL after 15 s). Idempotent."""
        records = list(self.records) or procs.read_records(self.directory)
        if records:
            killed = procs.terminate(records, run_dir=self.directory)
            if killed:
                self.log(f"had to SIGKILL: {', '.join(killed)}")
        self.records = []
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "env").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "state.json").unlink()
        self._uninstall_cleanup()

    @classmethod
    def attach(cls, directory: Path | str, log: Log | None = None) -> Stack | None:
        """The stack whose state is in ``directory`` if all its processes still run, else None."""
        directory = Path(directory).absolute()
        try:
            state = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError):
            return None
        stack = cls(directory, detached=bool(state.get("detached", True)), log=log)
        stack.records = procs.read_records(directory)
        if not stack.records or not all(r.running() for r in stack.records):
            return None
        stack.kafka_bootstrap = state["kafka_bootstrap"]
        stack.apiserver_url = state["apiserver_url"]
        stack.unprivileged_token = state.get("unprivileged_token")
        stack.timings = state.get("timings", {})
        return stack

    @staticmethod
    def stop_directory(directory: Path | str, log: Log | None = None) -> list[procs.ProcessRecord]:
        """Stop whatever the pid files in ``directory`` name (for ``down``); returns what was running."""
        directory = Path(directory).absolute()
        records = procs.read_records(directory)
        running = [r for r in records if r.running()]
        stack = Stack(directory, detached=True, log=log)
        stack.records = records
        stack.stop()
        return running

    def healthy(self) -> dict[str, bool]:
        """A quick health check of every server (for ``status``)."""
        pki = self.directory / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        out = {r.name: r.running() for r in self.records}
        out["kube-apiserver /readyz"] = self._http_ok(f"{self.apiserver_url}/readyz", ctx)
        try:
            run_sync(wait_for_broker(self.kafka_bootstrap, timeout_s=5.0))
            out["kafka metadata"] = True
        except Exception:
            out["kafka metadata"] = False
        return out

    # ------------------------------------------------------------------------- cleanup on interrupt

    def _install_cleanup(self) -> None:
        if self._cleanup_installed:
            return
        self._cleanup_installed = True
        atexit.register(self.stop)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            self._previous_handlers[sig] = previous
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.stop()  # first of all, so that the servers are gone whatever follows; restores the handlers
        if callable(previous):
            previous(signum, frame)
            return
        # Unwind like Ctrl-C does, so that the other cleanups (pytest's fixture teardowns, with-blocks,
        # atexit) run too instead of the process vanishing mid-way.
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def _uninstall_cleanup(self) -> None:
        if not self._cleanup_installed:
            return
        self._cleanup_installed = False
        atexit.unregister(self.stop)
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous_handlers.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, previous)
        self._previous_handlers.clear()


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
