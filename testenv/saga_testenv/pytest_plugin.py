"""pytest fixtures for the real local stack. Enable with ``pytest_plugins = ["saga_testenv.pytest_plugin"]``.

* ``stack`` (session): a ``StackEndpoints``. If both ``KUBECONFIG`` and ``KAFKA_BOOTSTRAP_SERVERS`` are set,
  the suite runs against that cluster and broker unchanged (``stack.managed`` is False, the unprivileged
  token is None unless ``SAGA_TESTENV_UNPRIVILEGED_TOKEN`` is set). Otherwise one ``Stack`` is started
  for the session in a temporary directory (its logs stay in pytest's basetemp) and stopped at the end,
  also on Ctrl-C/SIGTERM; its servers die with the pytest process even on SIGKILL.
* ``kubectl`` (session): ``kubectl(*args, input=None, check=False, kubeconfig=None, timeout=120)`` runs the
  project's kubectl against the stack's cluster and returns the ``CompletedProcess`` (text output).
* ``kafka_secure_bootstrap`` (session): ``"host:port"`` of the broker's SASL_SSL listener, the only
  client listener of a stack started here (none is plaintext).
* ``kafka_security`` (session): aiokafka settings that authenticate as the admin (``saga-admin``) on
  that listener: ``AIOKafkaAdminClient(bootstrap_servers=kafka_secure_bootstrap, **kafka_security)``.
  For another principal: ``stack.kafka_security(name)``.
  Both skip the test where the broker's security is not known (a foreign broker without
  ``SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP``, ``..._CA_FILE`` and ``..._CREDENTIALS_DIR``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .stack import Stack, StackEndpoints, StackError


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: needs the real Kubernetes API server and Kafka broker")


def _terminal_log(config: pytest.Config) -> Callable[[str], None]:
    capman: Any = config.pluginmanager.getplugin("capturemanager")

    def log(message: str) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(f"\n[testenv] {message}", flush=True)
        else:
            print(f"[testenv] {message}", flush=True)

    return log


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    external = StackEndpoints.from_environment()
    if external is not None:
        yield external
        return
    local = Stack(tmp_path_factory.mktemp("testenv"), detached=False, log=_terminal_log(request.config))
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kubectl(stack: StackEndpoints) -> Callable[..., subprocess.CompletedProcess[str]]:
    return stack.kubectl


@pytest.fixture(scope="session")
def kafka_secure_bootstrap(stack: StackEndpoints) -> str:
    if not stack.kafka_secure_bootstrap:
        pytest.skip("no secured Kafka listener known for this broker (SAGA_TESTENV_KAFKA_SECURE_BOOTSTRAP)")
    return stack.kafka_secure_bootstrap


@pytest.fixture(scope="session")
def kafka_security(stack: StackEndpoints, kafka_secure_bootstrap: str) -> dict[str, Any]:
    try:
        return stack.kafka_security()
    except (StackError, KeyError) as exc:
        pytest.skip(f"no Kafka admin credentials known for this broker: {exc}")
