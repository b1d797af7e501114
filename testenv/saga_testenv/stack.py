"""The local stack: etcd, kube-apiserver, kube-controller-manager and a single-node KRaft Kafka broker.

``Stack(directory).start()`` builds what the cache lacks, generates certificates, starts every server on
127.0.0.1 on free ports, waits until each answers its health check and writes ``kubeconfig``, ``env`` and
``state.json`` into ``directory``. ``StackEndpoints`` is what the rest of the project consumes: the same
attributes describe a stack started here or any cluster and broker named by ``KUBECONFIG`` and
``KAFKA_BOOTSTRAP_SERVERS`` (``StackEndpoints.from_environment()``).

The broker authenticates on every listener, its KRaft controller listener included: SASL_SSL with
SCRAM-SHA-512, TLS from the stack's CA, and ACLs (``StandardAuthorizer``, nothing allowed without one);
see ``kafka_auth``. A client takes ``kafka_secure_bootstrap`` and ``kafka_security(principal)``.

No listener is plaintext: ``kafka_bootstrap`` and ``KAFKA_BOOTSTRAP_SERVERS`` name the secured
listener. One explicit exception, for the benchmark alone: ``Stack(..., plaintext_listener=True)``, which
only ``saga-bench --kafka-security off|both`` passes (for a stack it starts for itself), also opens a
``BASELINE`` listener, PLAINTEXT, bound to 127.0.0.1 only, where the unauthenticated principal
``User:ANONYMOUS`` has ACLs for topics, groups and transactional ids from 127.0.0.1 (never cluster ACLs,
never the ACLs themselves): the baseline that measures what TLS and SASL cost. It is
``kafka_plaintext_bootstrap``; nothing else names it. No environment variable turns it on, and the
controller listener is never plaintext.

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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

import yaml

from . import build, certs, kafka_auth, procs, versions
from .kafka import run_sync, wait_for_broker
from .kafka_auth import ADMIN_PRINCIPAL, BROKER_PRINCIPAL, Acl, KafkaTools
from .kubectl import kubectl_path, run_kubectl

Log = Callable[[str], None]

UNPRIVILEGED_USER = "saga-unprivileged"
ENV_UNPRIVILEGED_USER = "SAGA_TESTENV_UNPRIVILEGED_USER"
ENV_UNPRIVILEGED_TOKEN = "SAGA_TESTENV_UNPRIVILEGED_TOKEN"
CONTEXT = "saga-testenv"

#: The secured (SASL_SSL) client listener of the broker; set for every stack started here.
ENV_KAFKA_SECURE_BOOTSTRAP = "SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP"
#: The CA certificate that signed the broker's (PEM); a client needs nothing else to trust the broker.
ENV_KAFKA_CA_FILE = "SAGA_TESTENV_KAFKA_CA_FILE"
#: A directory of ``<principal>.password`` files (mode 0600).
ENV_KAFKA_CREDENTIALS_DIR = "SAGA_TESTENV_KAFKA_CREDENTIALS_DIR"
#: The benchmark's loopback PLAINTEXT baseline listener, when a stack was started with it.
ENV_KAFKA_PLAINTEXT_BOOTSTRAP = "SAGA_TESTENV_KAFKA_PLAINTEXT_BOOTSTRAP"

#: The coordinator's principal, made with every stack (beside the admin and the broker's own).
OPERATOR_PRINCIPAL = "saga-operator"
#: The unauthenticated principal: what a client of a PLAINTEXT listener is.
ANONYMOUS = "User:ANONYMOUS"
#: What ``User:ANONYMOUS`` may do on the bench's baseline listener (from 127.0.0.1, the only address it
#: binds): what the bench's processes do (read and write topics, consumer groups, idempotent and
#: transactional producers). No cluster ACL: it can neither change ACLs nor act as a broker.
BASELINE_ACLS = (
    Acl.topic("*", "All", host="127.0.0.1"),
    Acl.group("*", "All", host="127.0.0.1"),
    Acl.transactional_id("*", "All", host="127.0.0.1"),
)

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

    Kafka: ``kafka_secure_bootstrap`` is the SASL_SSL listener (None for a foreign broker unless
    ``SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP`` names one), ``kafka_ca_file`` the CA to trust,
    ``kafka_credentials_dir`` the ``<principal>.password`` files. ``kafka_bootstrap`` is
    ``KAFKA_BOOTSTRAP_SERVERS``: for a stack started here, the secured listener. ``kafka_plaintext_bootstrap``
    is the benchmark's baseline listener, None unless a stack was started for it (see the module).
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
        kafka_secure_bootstrap: str | None = None,
        kafka_plaintext_bootstrap: str | None = None,
        kafka_ca_file: Path | None = None,
        kafka_credentials_dir: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kafka_bootstrap = kafka_bootstrap
        self.apiserver_url = apiserver_url
        self.unprivileged_user = unprivileged_user
        self.unprivileged_token = unprivileged_token
        self.kubernetes_version = kubernetes_version
        self.kafka_secure_bootstrap = kafka_secure_bootstrap
        self.kafka_plaintext_bootstrap = kafka_plaintext_bootstrap
        self.kafka_ca_file = kafka_ca_file
        self.kafka_credentials_dir = kafka_credentials_dir

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StackEndpoints | None:
        """Endpoints named by ``KUBECONFIG`` and ``KAFKA_BOOTSTRAP_SERVERS``, or None if either is unset.

        A secured broker is described by ``SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP``,
        ``SAGA_TESTENV_KAFKA_CA_FILE`` and ``SAGA_TESTENV_KAFKA_CREDENTIALS_DIR`` (what ``.stack/env``
        exports); without them the secured-broker tests skip.
        """
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
            kafka_secure_bootstrap=environ.get(ENV_KAFKA_SECURE_BOOTSTRAP) or None,
            kafka_plaintext_bootstrap=environ.get(ENV_KAFKA_PLAINTEXT_BOOTSTRAP) or None,
            kafka_ca_file=Path(environ[ENV_KAFKA_CA_FILE]) if environ.get(ENV_KAFKA_CA_FILE) else None,
            kafka_credentials_dir=(
                Path(environ[ENV_KAFKA_CREDENTIALS_DIR]) if environ.get(ENV_KAFKA_CREDENTIALS_DIR) else None
            ),
        )
        endpoints.apiserver_url = str(endpoints._current_cluster().get("server", ""))
        return endpoints

    def env(self) -> dict[str, str]:
        """Environment variables that point a client (kubectl, kopf, aiokafka) at this stack."""
        out = {"KUBECONFIG": str(self.kubeconfig), "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap}
        if self.unprivileged_token:
            out[ENV_UNPRIVILEGED_USER] = self.unprivileged_user or ""
            out[ENV_UNPRIVILEGED_TOKEN] = self.unprivileged_token
        if self.kafka_secure_bootstrap:
            out[ENV_KAFKA_SECURE_BOOTSTRAP] = self.kafka_secure_bootstrap
        if self.kafka_ca_file is not None:
            out[ENV_KAFKA_CA_FILE] = str(self.kafka_ca_file)
        if self.kafka_credentials_dir is not None:
            out[ENV_KAFKA_CREDENTIALS_DIR] = str(self.kafka_credentials_dir)
        if self.kafka_plaintext_bootstrap:
            out[ENV_KAFKA_PLAINTEXT_BOOTSTRAP] = self.kafka_plaintext_bootstrap
        return out

    # ------------------------------------------------------------------------------ Kafka clients

    def kafka_principals(self) -> list[str]:
        """The principals whose credentials this stack holds (the admin and the broker's own included)."""
        if self.kafka_credentials_dir is None:
            return []
        return sorted(p.name.removesuffix(".password") for p in self.kafka_credentials_dir.glob("*.password"))

    def kafka_credentials(self, principal: str) -> tuple[str, str]:
        """``(username, password)`` of a SCRAM principal; KeyError for a principal this stack lacks."""
        if self.kafka_credentials_dir is None:
            raise StackError(f"no Kafka credentials known for this broker (set {ENV_KAFKA_CREDENTIALS_DIR})")
        return principal, kafka_auth.read_password(self.kafka_credentials_dir, principal)

    def kafka_ssl_context(self) -> ssl.SSLContext:
        """Trusts the stack's CA only, and checks the broker's host name (127.0.0.1 is in its SANs)."""
        if self.kafka_ca_file is None:
            raise StackError(f"no CA known for this broker (set {ENV_KAFKA_CA_FILE})")
        return ssl.create_default_context(cafile=str(self.kafka_ca_file))

    def kafka_security(self, principal: str = ADMIN_PRINCIPAL) -> dict[str, Any]:
        """aiokafka settings (producer, consumer, admin client) to authenticate as ``principal`` over
        SASL_SSL: ``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``,
        ``sasl_plain_password``, ``ssl_context``. Not the address: use ``kafka_secure_bootstrap`` (or
        ``kafka_client_config``, which adds it)."""
        username, password = self.kafka_credentials(principal)
        return {
            "security_protocol": kafka_auth.SECURITY_PROTOCOL,
            "sasl_mechanism": kafka_auth.SASL_MECHANISM,
            "sasl_plain_username": username,
            "sasl_plain_password": password,
            "ssl_context": self.kafka_ssl_context(),
        }

    def kafka_client_config(self, principal: str = ADMIN_PRINCIPAL) -> dict[str, Any]:
        """``kafka_security(principal)`` plus ``bootstrap_servers``: ``AIOKafkaProducer(**config)``."""
        if not self.kafka_secure_bootstrap:
            raise StackError(f"no secured Kafka listener known (set {ENV_KAFKA_SECURE_BOOTSTRAP})")
        return {"bootstrap_servers": self.kafka_secure_bootstrap, **self.kafka_security(principal)}

    def kafka_librdkafka_config(self, principal: str = ADMIN_PRINCIPAL) -> dict[str, str]:
        """The same for librdkafka clients (kcat ``-X key=value``, confluent-kafka)."""
        if not self.kafka_secure_bootstrap or self.kafka_ca_file is None:
            raise StackError("no secured Kafka listener known for this broker")
        username, password = self.kafka_credentials(principal)
        return {
            "bootstrap.servers": self.kafka_secure_bootstrap,
            "security.protocol": kafka_auth.SECURITY_PROTOCOL,
            "sasl.mechanisms": kafka_auth.SASL_MECHANISM,
            "sasl.username": username,
            "sasl.password": password,
            "ssl.ca.location": str(self.kafka_ca_file),
        }

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
        if self.kafka_secure_bootstrap:
            lines.append(f"Kafka SASL_SSL         {self.kafka_secure_bootstrap}  (SCRAM-SHA-512)")
        if self.kafka_ca_file is not None:
            lines.append(f"Kafka CA               {self.kafka_ca_file}")
        if self.kafka_plaintext_bootstrap:
            lines.append(
                f"Kafka PLAINTEXT        {self.kafka_plaintext_bootstrap}  (the bench's baseline, loopback only)"
            )
        if self.kafka_credentials_dir is not None:
            lines.append(f"Kafka principals       {', '.join(self.kafka_principals())}")
            lines.append(f"Kafka passwords        {self.kafka_credentials_dir}/<principal>.password")
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


#: etcd's flag for not syncing its log to disk (test data only); see `Stack`'s ``etcd_fsync``.
ETCD_NO_FSYNC = "--unsafe-no-fsync=true"


def etcd_syncs(records: Iterable[procs.ProcessRecord]) -> bool | None:
    """Whether the stack's etcd (from its process records) syncs to disk; None when there is no etcd record."""
    for record in records:
        if record.name == "etcd":
            return ETCD_NO_FSYNC not in record.argv
    return None


class Stack(StackEndpoints):
    """A local stack in ``directory``. Use ``with Stack(d) as stack:`` or ``start()``/``stop()``.

    ``detached=False`` (tests): the servers die with this process (PR_SET_PDEATHSIG, even on SIGKILL) and
    are stopped at exit and on SIGTERM/SIGHUP (stopped first, then KeyboardInterrupt is raised so the rest
    of the program unwinds as on Ctrl-C, unless the program had its own handler).
    ``detached=True`` (``make up``): they outlive it; ``Stack.stop_directory`` or
    ``python -m saga_testenv down`` stops them from their pid files.

    ``kafka_principals``: SCRAM principals to make at start (with the admin, the broker's own and
    ``saga-operator``), each with a random password; ``add_kafka_principal`` makes more later.
    ``plaintext_listener``: also open the benchmark's loopback PLAINTEXT baseline listener (see the
    module); only ``saga-bench --kafka-security off|both`` asks for it.
    ``etcd_fsync``: etcd syncs its log to disk, as a real cluster's does (the benchmark's default). Off for
    tests and ``make up``: their data is thrown away, and fsync on a 2-core box is the slow part.
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
        kafka_principals: Iterable[str] = (),
        plaintext_listener: bool = False,
        etcd_fsync: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        super().__init__(
            kubeconfig=self.directory / "kubeconfig",
            kafka_bootstrap="",
            unprivileged_user=UNPRIVILEGED_USER,
            kubernetes_version=versions.KUBERNETES_VERSION,
            kafka_ca_file=self.directory / "pki" / "ca.crt",
            kafka_credentials_dir=self.directory / "kafka" / "credentials",
        )
        self.plaintext_listener = plaintext_listener
        self.etcd_fsync = etcd_fsync
        wanted = [ADMIN_PRINCIPAL, BROKER_PRINCIPAL, OPERATOR_PRINCIPAL, *kafka_principals]
        self.initial_kafka_principals = tuple(dict.fromkeys(kafka_auth.check_principal(p) for p in wanted))
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

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, secrets: Iterable[str] = ()
    ) -> procs.ProcessRecord:
        record = procs.spawn(
            name, argv, run_dir=self.directory, env=env, die_with_parent=not self.detached, secrets=list(secrets)
        )
        self.records.append(record)
        return record

    def _start(self, artifacts: build.Artifacts, t0: float) -> None:
        d = self.directory
        (etcd_client, etcd_peer, api_port, kafka_port, controller_port, kcm_port, plain_port) = procs.free_ports(7)
        pki = certs.generate(d / "pki")
        self.unprivileged_token = secrets.token_urlsafe(32)
        _write_private(d / "tokens.csv", f'{self.unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER},""\n')
        self.apiserver_url = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(pki)
        self.kafka_secure_bootstrap = f"127.0.0.1:{kafka_port}"
        self.kafka_plaintext_bootstrap = f"127.0.0.1:{plain_port}" if self.plaintext_listener else None
        self.kafka_bootstrap = self.kafka_secure_bootstrap

        # Kafka: format the storage directory first (one short JVM run) while etcd and the API server boot.
        # The format writes the first SCRAM credentials into the metadata log: the broker authenticates
        # its own controller connection with one of them, so they must be there before it starts.
        kafka_dir = d / "kafka"
        kafka_dir.mkdir()
        passwords = {name: kafka_auth.new_password() for name in self.initial_kafka_principals}
        assert self.kafka_credentials_dir is not None and self.kafka_ca_file is not None
        self.kafka_credentials_dir.mkdir(mode=0o700, parents=True)
        for name, password in passwords.items():
            _write_private(kafka_auth.password_file(self.kafka_credentials_dir, name), password + "\n")
        _write_private(
            self._admin_config(),
            kafka_auth.client_properties(ADMIN_PRINCIPAL, passwords[ADMIN_PRINCIPAL], self.kafka_ca_file),
        )
        props = kafka_dir / "server.properties"
        # 0600: it holds the broker's own password (its JAAS configuration)
        _write_private(
            props,
            self._kafka_properties(
                kafka_port,
                controller_port,
                kafka_dir / "data",
                pki=pki,
                broker_password=passwords[BROKER_PRINCIPAL],
                plaintext_port=plain_port if self.plaintext_listener else None,
            ),
        )
        (kafka_dir / "log4j2.properties").write_text(_LOG4J2)
        (kafka_dir / "tools-log4j2.properties").write_text(kafka_auth.TOOLS_LOG4J2)
        java_cp = ["java", *versions.KAFKA_JVM_OPTIONS, "-cp", f"{artifacts.kafka_libs}/*"]
        scram: list[str] = []
        for name, password in passwords.items():
            # On the format tool's command line for the second or two it runs (the tool takes them no
            # other way), never in its pid file.
            scram += ["--add-scram", kafka_auth.scram_format_arg(name, password)]
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
                *scram,
            ],
            secrets=passwords.values(),
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
                *([] if self.etcd_fsync else [ETCD_NO_FSYNC]),
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

        self._wait_kafka(kafka, t0)
        if self.kafka_plaintext_bootstrap:
            # while kube-controller-manager finishes booting
            self.grant(ANONYMOUS, BASELINE_ACLS)
            self.log(
                f"kafka: the bench's baseline PLAINTEXT listener at {self.kafka_plaintext_bootstrap} (loopback, "
                "User:ANONYMOUS has topic, group and transactional-id ACLs from 127.0.0.1)"
            )
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

    def _kafka_properties(
        self,
        port: int,
        controller_port: int,
        data: Path,
        *,
        pki: certs.StackCerts,
        broker_password: str,
        plaintext_port: int | None,
    ) -> str:
        listeners = [f"BROKER://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}"]
        advertised = [f"BROKER://127.0.0.1:{port}"]
        protocols = ["BROKER:SASL_SSL", "CONTROLLER:SASL_SSL"]
        if plaintext_port is not None:
            # the bench's baseline: loopback only, unauthenticated (User:ANONYMOUS), see BASELINE_ACLS
            listeners.append(f"BASELINE://127.0.0.1:{plaintext_port}")
            advertised.append(f"BASELINE://127.0.0.1:{plaintext_port}")
            protocols.append("BASELINE:PLAINTEXT")
        jaas = kafka_auth.jaas(BROKER_PRINCIPAL, broker_password)
        mechanism = kafka_auth.SASL_MECHANISM
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners={','.join(listeners)}",
                f"advertised.listeners={','.join(advertised)}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={','.join(protocols)}",
                "inter.broker.listener.name=BROKER",
                # Authentication: SCRAM-SHA-512 over TLS on both SASL listeners. The broker's own
                # connections (to its controller; to other brokers, had it any) authenticate as
                # saga-broker with the JAAS configuration of the listener they go to.
                f"sasl.enabled.mechanisms={mechanism}",
                f"sasl.mechanism.inter.broker.protocol={mechanism}",
                f"sasl.mechanism.controller.protocol={mechanism}",
                f"listener.name.broker.{mechanism.lower()}.sasl.jaas.config={jaas}",
                f"listener.name.controller.{mechanism.lower()}.sasl.jaas.config={jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={pki.kafka_keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={pki.ca_cert}",
                "ssl.client.auth=none",
                "ssl.endpoint.identification.algorithm=https",
                # Authorization: nothing without an ACL, but for the two super users.
                f"authorizer.class.name={kafka_auth.AUTHORIZER}",
                "allow.everyone.if.no.acl.found=false",
                "super.users=" + ";".join(f"User:{u}" for u in kafka_auth.SUPER_USERS),
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

    def _wait_kafka(self, record: procs.ProcessRecord, t0: float) -> None:
        """Until the broker answers a Metadata request on its secured listener, as the admin."""
        deadline = time.monotonic() + self.startup_timeout
        assert self.kafka_secure_bootstrap is not None
        while True:
            if not record.running():
                raise StackError(f"Kafka exited before it was ready; log {record.log}:\n{procs.log_tail(record)}")
            try:
                run_sync(wait_for_broker(self.kafka_secure_bootstrap, timeout_s=5.0, **self.kafka_security()))
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
            "kafka_secure_bootstrap": self.kafka_secure_bootstrap,
            "kafka_plaintext_bootstrap": self.kafka_plaintext_bootstrap,
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
        stack.kafka_secure_bootstrap = state.get("kafka_secure_bootstrap")
        stack.kafka_plaintext_bootstrap = state.get("kafka_plaintext_bootstrap")
        stack.plaintext_listener = stack.kafka_plaintext_bootstrap is not None
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
            assert self.kafka_secure_bootstrap is not None
            run_sync(wait_for_broker(self.kafka_secure_bootstrap, timeout_s=5.0, **self.kafka_security()))
            out["kafka metadata (SASL_SSL, saga-admin)"] = True
        except Exception:
            out["kafka metadata (SASL_SSL, saga-admin)"] = False
        if self.kafka_plaintext_bootstrap:
            try:
                run_sync(wait_for_broker(self.kafka_plaintext_bootstrap, timeout_s=5.0))
                out["kafka metadata (baseline PLAINTEXT)"] = True
            except Exception:
                out["kafka metadata (baseline PLAINTEXT)"] = False
        return out

    # -------------------------------------------------------------------- Kafka principals and ACLs

    def _admin_config(self) -> Path:
        """The admin's Java client properties, the tools' ``--command-config`` (mode 0600)."""
        return self.directory / "kafka" / "admin.properties"

    def kafka_tools(self) -> KafkaTools:
        """Kafka's ACL and config tools, as the admin, against the secured listener."""
        if not self.kafka_secure_bootstrap:
            raise StackError("the stack is not started")
        return KafkaTools(
            classpath=build.artifacts().kafka_tools_classpath(),
            bootstrap=self.kafka_secure_bootstrap,
            admin_config=self._admin_config(),
            log4j_config=self.directory / "kafka" / "tools-log4j2.properties",
        )

    def add_kafka_principal(self, name: str, *, timeout: float = 30.0) -> tuple[str, str]:
        """Make the SCRAM principal ``name`` (a random password, in the credentials directory) on the
        running broker, through Kafka's config tool as the admin, and wait until it can authenticate.
        Returns ``(username, password)``; a principal the stack has already is returned as it is."""
        assert self.kafka_credentials_dir is not None
        path = kafka_auth.password_file(self.kafka_credentials_dir, name)
        if path.exists():
            return self.kafka_credentials(name)
        password = kafka_auth.new_password()
        self.kafka_tools().upsert_scram_user(name, password, self.directory / "kafka" / f".{name}.scram")
        _write_private(path, password + "\n")
        # The credential is in the metadata log; the broker's authenticator sees it once the broker has
        # applied that record, a moment later.
        assert self.kafka_secure_bootstrap is not None
        try:
            run_sync(wait_for_broker(self.kafka_secure_bootstrap, timeout_s=timeout, **self.kafka_security(name)))
        except Exception as exc:
            raise StackError(f"Kafka principal {name} was created but cannot authenticate: {exc}") from exc
        return name, password

    def grant(self, principal: str, acls: Iterable[Acl]) -> None:
        """Add ACLs for ``principal`` (a name, or ``User:<name>``) with Kafka's ACL tool, as the admin.
        Adding an ACL that exists is not an error. They take effect at the next request of any
        connection, open ones included."""
        self.kafka_tools().add_acls(principal, list(acls))

    def grant_all(self, grants: Mapping[str, Iterable[Acl]]) -> None:
        """``grant`` for several principals at once (the tool's runs overlap: quicker than one by one)."""
        self.kafka_tools().add_acls_many({p: list(a) for p, a in grants.items()})

    def list_acls(self, principal: str | None = None) -> str:
        """Every ACL (or those of ``principal``), as Kafka's ACL tool prints them (``--list``)."""
        return self.kafka_tools().list_acls(principal)

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
