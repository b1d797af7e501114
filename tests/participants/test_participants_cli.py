"""`saga-participant`: seed, ledger, and `run` as a real process (HTTP endpoints, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from participants_support import WAIT, KafkaHarness, make_command, order, unique, until

from saga_buyvideo import build
from saga_buyvideo.cli import ServiceSettings, _parser, main, settings_from
from saga_buyvideo.demo import DEMO_USERS
from saga_participants import KafkaSettings
from saga_participants.testing import run_command
from saga_protocol import Outcome, command_topic

DEMO_TOTAL = 13_000


def test_seed_then_ledger_prints_the_books_and_the_money_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["seed", "--data-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["agents.db", "users.db", "videos.db"]
    capsys.readouterr()

    assert main(["ledger", "--data-dir", str(tmp_path), "--json"]) == 0
    ledger = json.loads(capsys.readouterr().out)
    assert ledger["users"] == DEMO_USERS
    assert ledger["agents"]["closed-agency"]["status"] == "closed"
    assert ledger["moneyTotal"] == DEMO_TOTAL and ledger["consistent"]

    assert main(["ledger", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"money total (users {DEMO_TOTAL} + agents 0): {DEMO_TOTAL} cents" in text
    assert "alice" in text and "closed-agency" in text


def test_the_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGA_DATA_DIR", str(tmp_path / "from-env"))
    assert main(["seed"]) == 0
    assert (tmp_path / "from-env" / "users.db").exists()


def test_ledger_without_data_says_to_seed_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "--data-dir", str(tmp_path / "nothing")]) == 1
    assert "seed" in capsys.readouterr().err


def test_run_refuses_an_unknown_service() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "payments"])
    assert exit_info.value.code == 2


def settings_for(*argv: str) -> ServiceSettings:
    return settings_from(_parser().parse_args(list(argv)))


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGA_HTTP_PORT", "8000")
    monkeypatch.setenv("SAGA_MAX_IN_FLIGHT", "4")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("SAGA_DATA_DIR", str(tmp_path))

    from_env = settings_for("run", "users")
    assert (from_env.http_port, from_env.max_in_flight, from_env.kafka.bootstrap_servers) == (8000, 4, "from-env:9092")
    assert from_env.data_dir == tmp_path and not from_env.allow_fault_injection

    flagged = settings_for("run", "users", "--http-port", "9000", "--bootstrap-servers", "flag:9092", "--name", "u2")
    assert (flagged.http_port, flagged.kafka.bootstrap_servers, flagged.participant_name) == (9000, "flag:9092", "u2")
    assert flagged.max_in_flight == 4


def test_the_reply_topic_and_the_namespace_allow_list_have_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAGA_ALLOWED_NAMESPACES", "shop")
    assert settings_for("run", "users").allowed_namespaces == ("shop",)
    flagged = settings_for("run", "users", "--reply-topic", "r.users", "--allowed-namespaces", "shop,billing")
    assert (flagged.reply_topic, flagged.allowed_namespaces) == ("r.users", ("shop", "billing"))
    p = build("users", tmp_path, settings=flagged, name="u3")
    assert (p.reply_topic, p.allowed_namespaces) == ("r.users", frozenset({"shop", "billing"}))
    everyone = settings_for("run", "users", "--allowed-namespaces", "")
    assert build("users", tmp_path, settings=everyone, name="u3").allowed_namespaces is None  # empty: all


def test_invalid_settings_exit_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SAGA_MAX_IN_FLIGHT", "lots")
    assert main(["run", "users", "--data-dir", str(tmp_path)]) == 2
    assert "max_in_flight" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "obeyed"),
    [
        ([], {}, False),
        (["--allow-fault-injection"], {}, True),
        ([], {"SAGA_ALLOW_FAULT_INJECTION": "true"}, True),
    ],
    ids=["default-off", "flag", "environment"],
)
async def test_fault_injection_is_off_unless_the_service_is_started_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], obeyed: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["seed", "--data-dir", str(tmp_path)]) == 0
    settings = settings_for("run", "users", "--data-dir", str(tmp_path), *argv)
    users = build("users", settings.data_dir, settings=settings)
    knob = {"simulate": {"users": {"errorAttempts": 1}}}
    command = make_command(action="debit", step="debit-buyer", payload={**order(), **knob})

    reply = await run_command(users, command)

    assert reply.outcome is (Outcome.ERROR if obeyed else Outcome.SUCCEEDED), reply


def test_a_busy_probe_port_ends_run_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # No broker is needed: the probe port is bound first, and the run ends there.
        code = main(
            [
                "run",
                "users",
                "--data-dir",
                str(tmp_path),
                "--http-port",
                str(port),
                "--bootstrap-servers",
                "127.0.0.1:1",
            ]
        )

    assert code == 1
    assert f"127.0.0.1:{port} is already in use" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def kafka(participants_kafka: KafkaSettings) -> AsyncIterator[KafkaHarness]:
    async with KafkaHarness(participants_kafka) as harness:
        yield harness


@pytest.mark.stack
async def test_run_serves_probes_and_metrics_handles_commands_and_stops_on_sigterm(
    tmp_path: Path, kafka: KafkaHarness
) -> None:
    assert main(["seed", "--data-dir", str(tmp_path)]) == 0
    name, port = unique("users"), free_port()
    env = {
        **os.environ,
        "SAGA_DATA_DIR": str(tmp_path),
        **kafka.env(),
        "SAGA_HTTP_PORT": str(port),
        "SAGA_PARTICIPANT_NAME": name,
        "SAGA_REPLY_TOPIC": kafka.reply_topic,
    }
    log = (tmp_path / "users.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "saga_buyvideo", "run", "users", env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def status(path: str) -> int:
                try:
                    async with http.get(base + path) as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return 0

            ready = False

            async def poll_ready() -> None:
                nonlocal ready
                while process.returncode is None and await status("/readyz") != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                ready = process.returncode is None

            await asyncio.wait_for(poll_ready(), WAIT)
            assert ready, (tmp_path / "users.log").read_text()
            assert await status("/healthz") == 200

            command = kafka.with_reply_topic(
                make_command(action="debit", step="debit-buyer", payload=order(buyer="carol", price=500))
            )
            await kafka.send(command, command_topic(name))
            reply = await kafka.reply_to(command)
            assert reply.outcome is Outcome.SUCCEEDED and reply.participant == name

            async with http.get(base + "/metrics") as response:
                metrics = await response.text()
            expected = f'saga_participant_commands_total{{kind="action",outcome="succeeded",participant="{name}"}} 1.0'
            assert expected in metrics
            assert f'saga_participant_ready{{participant="{name}"}} 1.0' in metrics

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), WAIT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    output = (tmp_path / "users.log").read_text()
    assert "SIGTERM received" in output and f"participant {name} stopped" in output
    assert main(["ledger", "--data-dir", str(tmp_path), "--json"]) == 0


@pytest.mark.stack
async def test_a_participant_started_before_its_topic_exists_creates_it(tmp_path: Path, kafka: KafkaHarness) -> None:
    from saga_buyvideo import agents

    p = agents.participant(
        tmp_path / "agents.db",
        name=unique("agents"),
        kafka=kafka.settings,
        reply_topic=kafka.reply_topic,
    )
    await kafka.start(p)  # returns once consuming: its topic exists, it has the partition
    await until(lambda: p.ready, what="ready")
    command = kafka.with_reply_topic(make_command(action="credit", step="credit-agent", payload=order(agent="nobody")))
    await kafka.send(command, p.command_topic)

    reply = await kafka.reply_to(command)
    assert reply.outcome is Outcome.FAILED and reply.error is not None and reply.error.reason == "UnknownAgent"


def test_run_refuses_otel_settings_it_cannot_honour(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from saga_participants import _tracing

    _tracing.provider_from_env.cache_clear()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    try:
        assert main(["run", "users", "--data-dir", str(tmp_path), "--http-port", "0"]) == 2
    finally:
        _tracing.provider_from_env.cache_clear()
    assert "OTEL_TRACES_EXPORTER names zipkin" in capsys.readouterr().err
