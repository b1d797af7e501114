"""The broker's authentication and authorization, on the real broker: who is refused, how quickly and
with what error; what an ACL grants and nothing more; that the admin manages topics; where the secrets
are kept. docs/operations.md, "Security", describes the setup these tests pin down."""

from __future__ import annotations

import re
import shutil
import ssl
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from saga_testenv import (
    ADMIN_PRINCIPAL,
    BROKER_PRINCIPAL,
    OPERATOR_PRINCIPAL,
    Acl,
    Stack,
    StackEndpoints,
    TopicSpec,
    certs,
    check_connection,
    ensure_topics,
    wait_for_broker,
)
from saga_testenv.kafka import KafkaNotReady
from saga_testenv.stack import BASELINE_ACLS, ENV_KAFKA_PLAINTEXT_BOOTSTRAP

pytestmark = pytest.mark.stack

#: A refusal must come at once: a client that is not let in must not wait out a timeout to find out.
PROMPT = 10.0


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def managed(stack: StackEndpoints) -> Stack:
    if not isinstance(stack, Stack):
        pytest.skip("a foreign broker: its principals and ACLs are not this stack's to make")
    return stack


@pytest.fixture
def principal(managed: Stack) -> Iterator[str]:
    """A fresh SCRAM principal with no ACL at all."""
    name = _unique("test-principal")
    managed.add_kafka_principal(name)
    yield name


@pytest.fixture
async def topic(kafka_secure_bootstrap: str, kafka_security: dict[str, Any]) -> str:
    name = _unique("sec-topic")
    assert await ensure_topics(kafka_secure_bootstrap, [name], **kafka_security) == [name]
    return name


def _properties(stack: Stack) -> dict[str, str]:
    text = (stack.directory / "kafka" / "server.properties").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


async def _admin_brokers(bootstrap: str, **config: Any) -> list[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **config)
    await admin.start()
    try:
        info = await admin.describe_cluster()
        brokers: list[Any] = info["brokers"]
        return brokers
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, acks="all", **config)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, count: int, **config: Any) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=5000,
        **config,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < count and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                received.extend(m.value for m in messages if m.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return received


# ---- the broker's configuration ----------------------------------------------------------------------


def test_every_listener_authenticates(managed: Stack) -> None:
    props = _properties(managed)
    protocols = dict(entry.split(":") for entry in props["listener.security.protocol.map"].split(","))
    listeners: dict[str, str] = {}
    for entry in props["listeners"].split(","):
        name, _, address = entry.partition("://")
        listeners[name] = address
    assert protocols["BROKER"] == protocols["CONTROLLER"] == "SASL_SSL"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["inter.broker.listener.name"] == "BROKER"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert (
        props["sasl.mechanism.controller.protocol"] == props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    )
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{BROKER_PRINCIPAL};User:{ADMIN_PRINCIPAL}"
    # no listener is plaintext: the suite's stack is the default one
    assert {name for name, protocol in protocols.items() if protocol != "SASL_SSL"} == set()
    assert set(listeners) == {"BROKER", "CONTROLLER"}
    assert listeners["BROKER"] == managed.kafka_secure_bootstrap == managed.kafka_bootstrap
    assert managed.kafka_plaintext_bootstrap is None
    assert ENV_KAFKA_PLAINTEXT_BOOTSTRAP not in managed.env()


def test_no_stack_has_a_plaintext_listener_unless_the_bench_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default, as the broker's configuration; the transition's old switch turns nothing on; the bench's
    explicit baseline (`Stack(plaintext_listener=True)`) is on loopback only, for User:ANONYMOUS with no
    cluster ACL."""
    monkeypatch.setenv("SAGA_TESTENV_KAFKA_PLAINTEXT_LISTENER", "1")
    pki = certs.generate(tmp_path / "pki")
    default = Stack(tmp_path)
    assert default.plaintext_listener is False
    props = default._kafka_properties(
        9092, 9093, tmp_path / "data", pki=pki, broker_password="secret", plaintext_port=None
    )
    assert "PLAINTEXT" not in props
    assert "listeners=BROKER://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n" in props
    assert "listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:SASL_SSL\n" in props
    baseline = Stack(tmp_path, plaintext_listener=True)
    assert baseline.plaintext_listener is True
    props = baseline._kafka_properties(
        9092, 9093, tmp_path / "data", pki=pki, broker_password="secret", plaintext_port=9094
    )
    assert "listeners=BROKER://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,BASELINE://127.0.0.1:9094\n" in props
    assert "listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:SASL_SSL,BASELINE:PLAINTEXT\n" in props
    assert all(acl.host == "127.0.0.1" and acl.resource != "cluster" for acl in BASELINE_ACLS)


def test_secrets_are_private(managed: Stack) -> None:
    kafka = managed.directory / "kafka"
    assert managed.kafka_credentials_dir is not None
    assert stat.S_IMODE(managed.kafka_credentials_dir.stat().st_mode) == 0o700
    secret_files = [
        *managed.kafka_credentials_dir.iterdir(),
        kafka / "server.properties",  # the broker's own password, in its JAAS configuration
        kafka / "admin.properties",
        managed.directory / "pki" / "kafka.key",
        managed.directory / "pki" / "kafka-keystore.pem",
    ]
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    names = managed.kafka_principals()
    assert {ADMIN_PRINCIPAL, BROKER_PRINCIPAL, OPERATOR_PRINCIPAL} <= set(names)
    passwords = [managed.kafka_credentials(n)[1] for n in names]
    assert len(set(passwords)) == len(passwords)  # one random password each
    assert all(len(p) >= 40 for p in passwords)
    env = (managed.directory / "env").read_text()
    assert all(p not in env for p in passwords)  # the env file names the files, never a password
    # nor do the pid files (they record command lines) or the logs (the broker logs its configuration)
    for path in [*(managed.directory / "pids").glob("*.pid"), *(managed.directory / "logs").glob("*.log")]:
        text = path.read_text(errors="replace")
        assert not [p for p in passwords if p in text], path


# ---- authentication ----------------------------------------------------------------------------------


async def test_a_client_without_credentials_is_refused_at_once(
    kafka_secure_bootstrap: str, stack: StackEndpoints
) -> None:
    # neither TLS nor SASL: the TLS listener drops the connection
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        await _admin_brokers(kafka_secure_bootstrap)
    # TLS (the right CA) but no SASL: the broker closes the connection at the first request that is not
    # part of the SASL handshake
    with pytest.raises(KafkaConnectionError):
        await _admin_brokers(kafka_secure_bootstrap, security_protocol="SSL", ssl_context=stack.kafka_ssl_context())
    with pytest.raises(KafkaConnectionError):
        await check_connection(kafka_secure_bootstrap)
    assert time.monotonic() - started < PROMPT


async def test_a_wrong_password_is_refused_with_a_clear_error(
    kafka_secure_bootstrap: str, kafka_security: dict[str, Any]
) -> None:
    wrong = {**kafka_security, "sasl_plain_password": "not-the-password"}
    unknown = {**kafka_security, "sasl_plain_username": "mallory"}
    for config in (wrong, unknown):
        started = time.monotonic()
        with pytest.raises(SaslAuthenticationFailed, match="invalid credentials with SASL mechanism SCRAM-SHA-512"):
            await check_connection(kafka_secure_bootstrap, **config)
        assert time.monotonic() - started < PROMPT
        # a client's bootstrap says only "Unable to bootstrap"; waiting for the broker names the reason
        with pytest.raises(KafkaNotReady, match="SaslAuthenticationFailed"):
            await wait_for_broker(kafka_secure_bootstrap, timeout_s=2.0, **config)


async def test_a_broker_certificate_from_another_ca_is_refused(
    kafka_secure_bootstrap: str, kafka_security: dict[str, Any]
) -> None:
    # the system's CAs, not the stack's: the client refuses the broker before sending its password
    with pytest.raises(ssl.SSLCertVerificationError):
        await check_connection(
            kafka_secure_bootstrap, **{**kafka_security, "ssl_context": ssl.create_default_context()}
        )


async def test_the_right_password_authenticates(kafka_secure_bootstrap: str, kafka_security: dict[str, Any]) -> None:
    await check_connection(kafka_secure_bootstrap, **kafka_security)
    (broker,) = await _admin_brokers(kafka_secure_bootstrap, **kafka_security)
    assert f"{broker['host']}:{broker['port']}" == kafka_secure_bootstrap


async def test_a_principal_made_at_run_time_authenticates(managed: Stack, principal: str) -> None:
    username, password = managed.kafka_credentials(principal)
    assert username == principal
    assert managed.add_kafka_principal(principal) == (username, password)  # made once; asking again is fine
    assert managed.kafka_secure_bootstrap is not None
    await check_connection(managed.kafka_secure_bootstrap, **managed.kafka_security(principal))


# ---- authorization -----------------------------------------------------------------------------------


async def test_a_principal_without_acls_can_do_nothing(
    managed: Stack, principal: str, topic: str, kafka_secure_bootstrap: str
) -> None:
    config = managed.kafka_security(principal)
    # it authenticates (cluster metadata needs no ACL) ...
    assert await _admin_brokers(kafka_secure_bootstrap, **config)
    # ... and is refused everything else, each with an authorization error, not a hang
    started = time.monotonic()
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka_secure_bootstrap, topic, [b"forged"], **config)
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(kafka_secure_bootstrap, topic, _unique("group"), 1, **config)
    with pytest.raises(TopicAuthorizationFailedError):
        await ensure_topics(kafka_secure_bootstrap, [_unique("not-allowed")], **config)
    assert time.monotonic() - started < 3 * PROMPT
    # it cannot even see which topics exist
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_secure_bootstrap, **config)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


async def test_acls_grant_exactly_what_they_name(
    managed: Stack, principal: str, topic: str, kafka_secure_bootstrap: str, kafka_security: dict[str, Any]
) -> None:
    group, other_group = _unique("group"), _unique("group")
    other = _unique("sec-other")
    await ensure_topics(kafka_secure_bootstrap, [other], **kafka_security)
    await _produce(kafka_secure_bootstrap, topic, [b"one", b"two"], **kafka_security)
    managed.grant(principal, [Acl.topic(topic, "Read"), Acl.group(group, "Read")])

    config = managed.kafka_security(principal)
    assert await _consume(kafka_secure_bootstrap, topic, group, 2, **config) == [b"one", b"two"]
    with pytest.raises(TopicAuthorizationFailedError):  # Read is not Write
        await _produce(kafka_secure_bootstrap, topic, [b"forged"], **config)
    with pytest.raises(TopicAuthorizationFailedError):  # that topic, not another
        await _consume(kafka_secure_bootstrap, other, group, 1, **config)
    with pytest.raises(GroupAuthorizationFailedError):  # that group, not another
        await _consume(kafka_secure_bootstrap, topic, other_group, 1, **config)

    listed = managed.list_acls(principal)
    assert f"ResourcePattern(resourceType=TOPIC, name={topic}, patternType=LITERAL)" in listed
    assert f"ResourcePattern(resourceType=GROUP, name={group}, patternType=LITERAL)" in listed
    assert f"(principal=User:{principal}, host=*, operation=READ, permissionType=ALLOW)" in listed
    assert "operation=WRITE" not in listed


async def test_a_prefixed_acl_covers_the_names_it_prefixes(
    managed: Stack, principal: str, kafka_secure_bootstrap: str, kafka_security: dict[str, Any]
) -> None:
    prefix = f"{_unique('sec-prefix')}."
    inside, outside = f"{prefix}a", f"{prefix[:-1]}-b"
    await ensure_topics(kafka_secure_bootstrap, [inside, outside], **kafka_security)
    managed.grant(principal, [Acl.topic(prefix, "Write", prefixed=True)])
    config = managed.kafka_security(principal)
    await _produce(kafka_secure_bootstrap, inside, [b"ok"], **config)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(kafka_secure_bootstrap, outside, [b"no"], **config)
    assert f"ResourcePattern(resourceType=TOPIC, name={prefix}, patternType=PREFIXED)" in managed.list_acls(principal)


async def test_the_admin_creates_and_deletes_topics(
    kafka_secure_bootstrap: str, kafka_security: dict[str, Any]
) -> None:
    name = _unique("sec-admin")
    assert await ensure_topics(kafka_secure_bootstrap, [TopicSpec(name, partitions=2)], **kafka_security) == [name]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_secure_bootstrap, **kafka_security)
    await admin.start()
    try:
        assert name in await admin.list_topics()
        await admin.delete_topics([name])
    finally:
        await admin.close()


# ---- no way in without credentials ------------------------------------------------------------------


async def test_an_unauthenticated_client_is_refused_on_every_listener(managed: Stack) -> None:
    """The broker's every listener (as its configuration names them), tried without TLS and SASL, and with
    TLS but no SASL: none takes the client. User:ANONYMOUS has no ACL either."""
    props = _properties(managed)
    addresses = [entry.partition("://")[2] for entry in props["listeners"].split(",")]
    assert len(addresses) == 2  # BROKER and CONTROLLER
    tls_only = {"security_protocol": "SSL", "ssl_context": managed.kafka_ssl_context()}
    for address in addresses:
        for settings in ({}, tls_only):
            with pytest.raises(KafkaConnectionError):
                await _admin_brokers(address, **settings)
    assert "ANONYMOUS" not in managed.list_acls()


# ---- other clients -----------------------------------------------------------------------------------


def test_a_librdkafka_client_lists_the_broker_over_sasl_ssl(stack: StackEndpoints, kafka_secure_bootstrap: str) -> None:
    """An independent client (librdkafka, through confluent-kafka) with the stack's settings."""
    from confluent_kafka.admin import AdminClient

    try:
        config = stack.kafka_librdkafka_config()
    except Exception as exc:
        pytest.skip(f"no Kafka credentials known for this broker: {exc}")
    metadata = AdminClient({**config, "log_level": 0}).list_topics(timeout=30)
    assert [f"{b.host}:{b.port}" for b in metadata.brokers.values()] == [kafka_secure_bootstrap]


def _kcat_librdkafka_version(kcat: str) -> tuple[int, ...]:
    out = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"librdkafka (?:version )?([0-9]+(?:\.[0-9]+)+)", out)
    return tuple(int(x) for x in found.group(1).split(".")) if found else (0,)


def test_kcat_lists_the_broker_over_sasl_ssl(stack: StackEndpoints, kafka_secure_bootstrap: str) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install kcat; .ci/run installs it)")
    try:
        config = stack.kafka_librdkafka_config()
    except Exception as exc:
        pytest.skip(f"no Kafka credentials known for this broker: {exc}")
    bootstrap = config.pop("bootstrap.servers")
    version = _kcat_librdkafka_version(kcat)
    refused = version < (2, 6, 1)
    args = [kcat, "-L", "-m", "3" if refused else "15", "-b", bootstrap]
    for key, value in config.items():
        args += ["-X", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if refused:
        # librdkafka before 2.6.1 appends its nonce twice in the SCRAM client-final-message; Kafka 4
        # checks the nonce as RFC 5802 says and refuses it. TLS and the mechanism were agreed, though.
        assert "SASL authentication error" in result.stderr, result.stderr
        pytest.skip(
            f"kcat links librdkafka {'.'.join(map(str, version))}, whose SCRAM Kafka 4 refuses (fixed in 2.6.1); "
            "the librdkafka test above covers a current one"
        )
    assert result.returncode == 0, result.stderr
    assert f"broker 1 at {kafka_secure_bootstrap}" in result.stdout, result.stdout


def test_grant_all_grants_several_principals_at_once(managed: Stack) -> None:
    first, second = _unique("test-principal"), _unique("test-principal")
    for name in (first, second):
        managed.add_kafka_principal(name)
    managed.grant_all(
        {
            first: [Acl.topic(f"{first}.in", "Read"), Acl.group(first, "Read"), Acl.topic(f"{first}.out", "Write")],
            second: [Acl.topic(f"{second}.", "Write", prefixed=True)],
        }
    )
    listed = managed.list_acls(first) + managed.list_acls(second)
    for resource in (
        f"resourceType=TOPIC, name={first}.in, patternType=LITERAL",
        f"resourceType=GROUP, name={first}, patternType=LITERAL",
        f"resourceType=TOPIC, name={first}.out, patternType=LITERAL",
        f"resourceType=TOPIC, name={second}., patternType=PREFIXED",
    ):
        assert resource in listed
    assert listed.count(f"(principal=User:{first}, ") == 3
    assert listed.count(f"(principal=User:{second}, ") == 1


def test_a_recorded_command_line_holds_no_secret(tmp_path: Path) -> None:
    """The storage tool takes the first SCRAM passwords on its command line; its pid file must not."""
    from saga_testenv.procs import read_records, spawn, terminate

    record = spawn(
        "format",
        ["sleep", "5", "SCRAM-SHA-512=[name=x,password=s3cret]"],
        run_dir=tmp_path,
        die_with_parent=True,
        secrets=["s3cret"],
    )
    try:
        (on_disk,) = read_records(tmp_path)
        assert on_disk.argv[-1] == record.argv[-1] == "SCRAM-SHA-512=[name=x,password=<redacted>]"
        assert "s3cret" not in (tmp_path / "pids" / "format.pid").read_text()
    finally:
        terminate([record], run_dir=tmp_path)
