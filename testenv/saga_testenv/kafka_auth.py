"""Authentication and authorization on the local stack's Kafka broker.

Every listener of the broker, the KRaft controller listener included, is SASL_SSL with SCRAM-SHA-512:

* **TLS** from the stack's own CA (``certs.py``; the broker's certificate names 127.0.0.1 and localhost),
  so a client needs only ``ca.crt`` and verifies the broker's host name. No client certificates.
* **SCRAM-SHA-512** principals: plain names (``User:saga-admin``), independent of any certificate DN, each
  with a random password in ``<stack>/kafka/credentials/<name>.password`` (mode 0600). The broker keeps
  only salted hashes, in its KRaft metadata log: the first ones are written by ``kafka-storage format
  --add-scram`` before the broker starts, later ones by Kafka's ``kafka-configs`` tool as the admin.
* **ACLs**: ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``: a principal may do
  exactly what an ACL grants it. The super users are the broker's own principal (``saga-broker``, for
  its connection to its controller) and the admin (``saga-admin``, topics and ACLs); nobody else.
  ACLs are applied and read back with Kafka's own ACL tool (``org.apache.kafka.tools.AclCommand``).

The principals' names are the caller's business (this package knows nothing of sagas): the stack makes
the admin and the broker, and whatever names it is given.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SECURITY_PROTOCOL = "SASL_SSL"
SASL_MECHANISM = "SCRAM-SHA-512"
#: The broker's own principal: its broker half authenticates as this to its controller half.
BROKER_PRINCIPAL = "saga-broker"
#: Creates topics and manages ACLs and SCRAM credentials; a super user.
ADMIN_PRINCIPAL = "saga-admin"
SUPER_USERS = (BROKER_PRINCIPAL, ADMIN_PRINCIPAL)

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
_ACL_TOOL = "org.apache.kafka.tools.AclCommand"
_CONFIG_TOOL = "kafka.admin.ConfigCommand"
_SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"

#: Names a principal may have here: safe in file names and in the tools' ``[name=...,password=...]``
#: syntax (SCRAM itself would allow more).
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: Short-lived JVMs for the tools: a small heap, the quick C1 compiler only.
TOOL_JVM_OPTIONS = (
    "-Xms32m",
    "-Xmx192m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

TOOLS_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = STDERR
"""

ResourceType = Literal["topic", "group", "cluster", "transactional-id"]
PatternType = Literal["literal", "prefixed"]
Permission = Literal["allow", "deny"]

_OPERATIONS = frozenset(
    {
        "All",
        "Read",
        "Write",
        "Create",
        "Delete",
        "Alter",
        "Describe",
        "ClusterAction",
        "DescribeConfigs",
        "AlterConfigs",
        "IdempotentWrite",
    }
)


class KafkaAuthError(RuntimeError):
    """A Kafka tool refused or failed; the message carries its output."""


def check_principal(name: str) -> str:
    """``name`` itself if it is a principal name this stack can hold, else ValueError."""
    if not _PRINCIPAL.match(name):
        raise ValueError(f"Kafka principal name {name!r}: letters, digits, '.', '_' and '-', at most 128")
    return name


def new_password() -> str:
    """32 random bytes, URL-safe base64: no character the SCRAM tools' syntax would need escaped."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Acl:
    """One ACL binding for a principal: ``operations`` on a resource, from ``host``.

    ``name`` is a topic, group or transactional id (``"*"`` is Kafka's wildcard: every one), ignored for
    the cluster; ``pattern="prefixed"`` matches every name starting with ``name``. ``operations`` are
    Kafka's names: Read, Write, Create, Delete, Alter, Describe, DescribeConfigs, AlterConfigs,
    IdempotentWrite, ClusterAction, All.
    """

    resource: ResourceType
    name: str
    operations: tuple[str, ...]
    pattern: PatternType = "literal"
    host: str = "*"
    permission: Permission = "allow"

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in _OPERATIONS]
        if unknown or not self.operations:
            raise ValueError(f"ACL operations {list(self.operations)}: expected some of {sorted(_OPERATIONS)}")
        if self.resource != "cluster" and not self.name:
            raise ValueError(f"an ACL on a {self.resource} needs its name (or '*')")

    @classmethod
    def topic(cls, name: str, *operations: str, prefixed: bool = False, host: str = "*") -> Acl:
        return cls("topic", name, operations, "prefixed" if prefixed else "literal", host)

    @classmethod
    def group(cls, name: str, *operations: str, prefixed: bool = False, host: str = "*") -> Acl:
        return cls("group", name, operations, "prefixed" if prefixed else "literal", host)

    @classmethod
    def cluster(cls, *operations: str, host: str = "*") -> Acl:
        return cls("cluster", "kafka-cluster", operations, "literal", host)

    @classmethod
    def transactional_id(cls, name: str, *operations: str, prefixed: bool = False, host: str = "*") -> Acl:
        return cls("transactional-id", name, operations, "prefixed" if prefixed else "literal", host)

    def tool_args(self, principal: str) -> list[str]:
        """The ACL tool's ``--add`` arguments for this binding of ``principal`` (``User:<name>``)."""
        who = "allow" if self.permission == "allow" else "deny"
        args = [f"--{who}-principal", principal_of(principal), f"--{who}-host", self.host]
        for operation in self.operations:
            args += ["--operation", operation]
        return [*args, "--resource-pattern-type", self.pattern, *self.resource_args()]

    def resource_args(self) -> list[str]:
        return ["--cluster"] if self.resource == "cluster" else [f"--{self.resource}", self.name]


def principal_of(name: str) -> str:
    """``User:<name>`` (a name that already has the ``User:`` prefix is returned as it is)."""
    if name.startswith("User:"):
        check_principal(name.removeprefix("User:"))
        return name
    return f"User:{check_principal(name)}"


def jaas(username: str, password: str) -> str:
    """The ``sasl.jaas.config`` value of a SCRAM client (a broker's own outgoing connections too)."""
    return f'{_SCRAM_LOGIN} required username="{username}" password="{password}";'


def client_properties(username: str, password: str, ca_file: Path) -> str:
    """A Java client's properties (the tools' ``--command-config``) for ``username`` over SASL_SSL."""
    return "\n".join(
        [
            f"security.protocol={SECURITY_PROTOCOL}",
            f"sasl.mechanism={SASL_MECHANISM}",
            f"sasl.jaas.config={jaas(username, password)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={ca_file}",
            "",
        ]
    )


def scram_format_arg(username: str, password: str) -> str:
    """One ``kafka-storage format --add-scram`` value."""
    return f"{SASL_MECHANISM}=[name={check_principal(username)},password={password}]"


# ----------------------------------------------------------------------------------- credential files


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def password_file(credentials_dir: Path, principal: str) -> Path:
    return credentials_dir / f"{check_principal(principal)}.password"


def read_password(credentials_dir: Path, principal: str) -> str:
    path = password_file(credentials_dir, principal)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise KeyError(f"no Kafka principal {principal!r} in this stack (no {path})") from None


# --------------------------------------------------------------------------------------- the tools


@dataclass(frozen=True)
class KafkaTools:
    """Kafka's own command-line tools (the JVM classes behind kafka-acls.sh and kafka-configs.sh), run as
    the admin principal against the secured listener."""

    classpath: str
    bootstrap: str
    admin_config: Path
    log4j_config: Path
    timeout: float = 120.0

    def run(self, main: str, args: Sequence[str]) -> str:
        argv = [
            "java",
            *TOOL_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            "-cp",
            self.classpath,
            main,
            "--bootstrap-server",
            self.bootstrap,
            "--command-config",
            str(self.admin_config),
            *args,
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaAuthError(f"{main} {' '.join(args)}: no answer within {self.timeout:.0f}s") from exc
        if done.returncode != 0:
            raise KafkaAuthError(
                f"{main} {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}".rstrip()
            )
        return done.stdout

    def add_acls(self, principal: str, acls: Iterable[Acl]) -> None:
        self.add_acls_many({principal: acls})

    def add_acls_many(self, grants: Mapping[str, Iterable[Acl]]) -> None:
        """Add every principal's ACLs: one run of the ACL tool per group of one principal's bindings
        that differ only in their resource (the tool applies its operations to every resource it is
        given, and checks them against each resource's type, so a group is valid exactly when each
        binding is). The runs go two at a time: each is a JVM start, most of its cost."""
        runs: list[list[str]] = []
        for principal, acls in grants.items():
            groups: dict[tuple[str, str, tuple[str, ...], str], list[Acl]] = {}
            for acl in acls:
                groups.setdefault((acl.permission, acl.host, acl.operations, acl.pattern), []).append(acl)
            for bindings in groups.values():
                args = bindings[0].tool_args(principal)
                for other in bindings[1:]:
                    args += other.resource_args()
                runs.append(["--add", *args])
        if len(runs) <= 1:
            for args in runs:
                self.run(_ACL_TOOL, args)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(self.run, _ACL_TOOL, args) for args in runs]:
                future.result()

    def list_acls(self, principal: str | None = None) -> str:
        args = ["--list"]
        if principal is not None:
            args += ["--principal", principal_of(principal)]
        return self.run(_ACL_TOOL, args)

    def upsert_scram_user(self, username: str, password: str, config_file: Path) -> None:
        """Create or change ``username``'s SCRAM-SHA-512 credential. The password goes through a 0600 file
        (``--add-config-file``), not the tool's command line, which every local user can read."""
        # a properties file: the value is what the command-line syntax has between its brackets
        write_private(config_file, f"{SASL_MECHANISM}=password={password}\n")
        try:
            self.run(
                _CONFIG_TOOL,
                [
                    "--alter",
                    "--entity-type",
                    "users",
                    "--entity-name",
                    check_principal(username),
                    "--add-config-file",
                    str(config_file),
                ],
            )
        finally:
            config_file.unlink(missing_ok=True)
