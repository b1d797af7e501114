"""The conformance kit against the Python buy-video `users` participant, over the real broker.

The kit runs once, as a person would run it (`python -m saga_conformance`, starting, killing and
restarting `saga-participant run users` itself); each rule is one test. Rules today's SDK does not meet
are strict xfails naming the missing SDK feature: when the SDK gains it, they pass, and the xfail must go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kit_support import ProtocolKafka, run_kit

from saga_conformance.rules import RULES

pytestmark = pytest.mark.stack

PAYLOAD = {"buyer": "alice", "video": "v-kit", "price": 100, "agent": "bob-agency"}
FAILING = {"buyer": "dave", "video": "v-kit", "price": 100, "agent": "bob-agency"}  # dave has 0 cents

#: The kit's commands come from NAMESPACE; the participant admits only it, so FOREIGN is refused.
NAMESPACE, FOREIGN = "conformance", "conformance-foreign"


@pytest.fixture(scope="module")
def verdicts(protocol_kafka: ProtocolKafka, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    data = tmp_path_factory.mktemp("kit-users")
    name = f"users-kit-{uuid.uuid4().hex[:8]}"  # topics and a consumer group of its own
    subprocess.run([sys.executable, "-m", "saga_buyvideo.cli", "seed", "--data-dir", str(data)], check=True)
    participant = (
        protocol_kafka.participant(name)  # its own principal and ACLs
        + f"{sys.executable} -m saga_buyvideo.cli run users --name {name} --data-dir {data} "
        f"--http-port 0 --bootstrap-servers {protocol_kafka.bootstrap} "
        # the kit's slow-handler convention (--slow-simulate) is the SDK's fault injection, off by default
        f"--allow-fault-injection --allowed-namespaces {NAMESPACE}"
    )
    report = data / "verdicts.json"
    argv = [
        sys.executable,
        "-m",
        "saga_conformance",
        "--participant",
        name,
        "--action",
        "debit",
        "--compensation",
        "refund",
        "--payload",
        json.dumps(PAYLOAD),
        "--failing-payload",
        json.dumps(FAILING),
        "--slow-simulate",
        "--slow-seconds",
        "5",
        "--participant-command",
        participant,
        "--namespace",
        NAMESPACE,
        "--foreign-namespace",
        FOREIGN,
        "--bootstrap-servers",
        protocol_kafka.bootstrap,
        "--log-dir",
        str(data / "logs"),
        "--json",
        str(report),
    ]
    found: dict[str, dict[str, Any]] = run_kit(argv, report, protocol_kafka.kit_env)
    return found


@pytest.mark.parametrize("rule", [rule.name for rule in RULES])
def test_the_python_participant_meets_the_rule(rule: str, verdicts: dict[str, dict[str, Any]]) -> None:
    verdict = verdicts[rule]
    assert verdict["status"] == "pass", f"{rule}: {verdict['status']}: {verdict['detail']}"


def test_the_kit_lists_its_rules() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "saga_conformance", "--list-rules"], capture_output=True, text=True, check=True
    )
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [rule.name for rule in RULES]


def test_the_kit_says_when_it_cannot_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "saga_conformance",
            "--participant",
            "nobody",
            "--action",
            "a",
            "--compensation",
            "c",
            "--payload",
            "{}",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--no-create-topics",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
