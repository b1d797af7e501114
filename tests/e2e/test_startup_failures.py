"""What a wait cannot fix ends the operator process at start-up, at once, with a non-zero exit and one line
that says why (docs/operations.md, "Start-up failures"), so that Kubernetes shows it and restarts the pod.

Each test starts the real process the way the harness does (`saga_harness.services.operator_service`:
`python -m saga_operator`, configured through the environment, pointed at the real local stack), with one
thing wrong, and reads its exit status and stderr.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from saga_harness import kafka_access
from saga_harness.services import operator_service
from saga_testenv.stack import StackEndpoints

pytestmark = pytest.mark.stack

# Python, Kopf and the clients take 1-2 s to import here; the failures come right after.
PROMPTLY = 20.0


def _run(run_dir: Path, stack: StackEndpoints, **settings: str) -> tuple[subprocess.CompletedProcess[str], float]:
    service = operator_service(run_dir, stack.env(), SAGA_NAMESPACE="startup-failures", **settings)
    began = time.monotonic()
    result = subprocess.run(service.argv, env=service.env, capture_output=True, text=True, timeout=PROMPTLY * 3)
    return result, time.monotonic() - began


def test_a_port_in_use_ends_the_operator_with_a_clear_error(stack: StackEndpoints, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result, took = _run(tmp_path, stack, SAGA_HTTP_HOST="127.0.0.1", SAGA_HTTP_PORT=str(port))
    assert result.returncode == 1, result.stderr
    assert took < PROMPTLY, f"took {took:.1f}s:\n{result.stderr}"
    assert f"saga-operator cannot start: PortInUse: [Errno 98] cannot serve probes and metrics: 127.0.0.1:{port}" in (
        result.stderr
    )
    assert "is already in use" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("SAGA_HTTP_PORT", "abc", "Input should be a valid integer"),
        ("SAGA_TOPIC_PARTITIONS", "0", "Input should be greater than or equal to 1"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL", "Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
    ],
)
def test_a_setting_that_does_not_parse_ends_the_operator_naming_the_variable(
    stack: StackEndpoints, tmp_path: Path, variable: str, value: str, why: str
) -> None:
    result, took = _run(tmp_path, stack, **{variable: value})
    assert result.returncode == 2, result.stderr
    assert took < PROMPTLY, f"took {took:.1f}s:\n{result.stderr}"
    assert f"saga-operator cannot start: invalid setting: {variable}='{value}': {why}" in result.stderr


def test_a_broker_that_refuses_the_login_ends_the_operator_naming_broker_and_principal(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    """The secured listener, the operator's principal with a wrong password: refused by SCRAM
    (KafkaAuthenticationError), not an outage waited out."""
    if not kafka_access.secured(stack):
        pytest.skip("the broker's security is not known (no secured listener, CA or admin credentials)")
    env = kafka_access.client_env(stack, kafka_access.OPERATOR)
    env.pop("KAFKA_SASL_PASSWORD_FILE")
    result, took = _run(tmp_path, stack, SAGA_HTTP_HOST="127.0.0.1", **env, KAFKA_SASL_PASSWORD="not-the-password")
    assert result.returncode == 1, result.stderr
    assert took < PROMPTLY, f"took {took:.1f}s:\n{result.stderr}"
    assert (
        f"saga-operator cannot start: KafkaAuthenticationError: Kafka broker {env['KAFKA_BOOTSTRAP_SERVERS']} refused "
        "to authenticate User:saga-operator (SASL_SSL, SCRAM-SHA-512)"
    ) in result.stderr
    assert "not-the-password" not in result.stderr
