"""`saga-participant`: run a buy-video service, seed its demo data, print the ledgers.

    saga-participant run videos|users|agents [--data-dir DIR] [--bootstrap-servers HOST:PORT] [--http-port N]
                     [--http-host H] [--name NAME] [--max-in-flight N] [--allow-fault-injection]
                     [--reply-topic TOPIC] [--allowed-namespaces NS[,NS...]]
    saga-participant seed [--data-dir DIR] [--reset]
    saga-participant ledger [--data-dir DIR] [--json]

Every option has an environment variable (flags win): `ServiceSettings` below, the SDK's
`ParticipantSettings` (SAGA_*) and `KafkaSettings` (KAFKA_*, security included). docs/participants.md has
the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError

from saga_buyvideo import SERVICES, build
from saga_buyvideo.demo import dump_ledger, format_ledger, read_ledger, seed
from saga_participants import KafkaSettings, ParticipantSettings, TracingSettingsError

#: Default HTTP ports, distinct so that the three services can run side by side on one machine.
DEFAULT_HTTP_PORTS: Final = {"videos": 8081, "users": 8082, "agents": 8083}


class ServiceSettings(ParticipantSettings):
    """The SDK's settings plus the buy-video services' own. Environment: SAGA_<FIELD>."""

    data_dir: Path = Field(default=Path("data"), description="Where <service>.db lives.")
    participant_name: str | None = Field(
        default=None,
        description="Participant name, hence topic saga.commands.<name> and group saga-participant-<name> "
        "(default: the service's).",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")


def _parser() -> argparse.ArgumentParser:
    # Defaults are None throughout: an option not given comes from the environment (ServiceSettings).
    parser = argparse.ArgumentParser(prog="saga-participant", description="The buy-video saga's participant services.")
    parser.add_argument("--log-level", help="logging level (env SAGA_LOG_LEVEL, default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    data_dir = "where <service>.db lives (env SAGA_DATA_DIR, default ./data)"

    run = commands.add_parser("run", help="run one service until SIGTERM")
    run.add_argument("service", choices=sorted(SERVICES))
    run.add_argument("--data-dir", type=Path, help=data_dir)
    run.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)")
    run.add_argument(
        "--http-port",
        type=int,
        help="port of /healthz /readyz /metrics; 0 picks a free one (env SAGA_HTTP_PORT; "
        "default videos 8081, users 8082, agents 8083)",
    )
    run.add_argument("--http-host", help="(env SAGA_HTTP_HOST, default 127.0.0.1)")
    run.add_argument(
        "--name",
        dest="participant_name",
        help="participant name, hence topic saga.commands.<name> and group saga-participant-<name> "
        "(default: the service; env SAGA_PARTICIPANT_NAME)",
    )
    run.add_argument("--max-in-flight", type=int, help="commands handled at once (env SAGA_MAX_IN_FLIGHT, default 16)")
    run.add_argument(
        "--allow-fault-injection",
        action="store_true",
        default=None,
        help="obey a saga payload's `simulate` block: tests, demos and chaos runs only "
        "(env SAGA_ALLOW_FAULT_INJECTION, default off)",
    )

    run.add_argument(
        "--reply-topic",
        help="the only topic it replies to (env SAGA_REPLY_TOPIC, default saga.replies.<name>); commands naming "
        "another are dead-lettered UntrustedReplyTopic",
    )
    run.add_argument(
        "--allowed-namespaces",
        help="comma-separated namespaces whose sagas may command it (env SAGA_ALLOWED_NAMESPACES, default: all); "
        "others are refused NamespaceNotAllowed",
    )

    seed_cmd = commands.add_parser("seed", help="create the three databases with demo users and agents")
    seed_cmd.add_argument("--data-dir", type=Path, help=data_dir)
    seed_cmd.add_argument("--reset", action="store_true", help="empty every table first (inbox included)")

    ledger = commands.add_parser("ledger", help="print balances, purchases, credits and the money total")
    ledger.add_argument("--data-dir", type=Path, help=data_dir)
    ledger.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    """The environment's settings with the flags that were given on top."""
    flags: dict[str, Any] = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in ServiceSettings.model_fields and name != "kafka"
    }
    if getattr(args, "bootstrap_servers", None) is not None:
        flags["kafka"] = KafkaSettings(bootstrap_servers=args.bootstrap_servers)
    return ServiceSettings(**flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"saga-participant: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiokafka logs every coordinator hiccup at INFO; the SDK reports what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # ...and a missing topic at ERROR ten times a second while it waits for metadata; the SDK logs its own
    # line per retry (and dead-letters the command when the reply topic never appears).
    logging.getLogger("aiokafka.cluster").addFilter(
        lambda record: not record.getMessage().endswith("not found in cluster metadata")
    )
    if args.command == "run":
        return _run(args.service, settings)
    try:
        if args.command == "seed":
            ledger = seed(settings.data_dir, reset=args.reset)
            print(f"seeded {os.path.abspath(settings.data_dir)}: money total {ledger['moneyTotal']} cents")
            return 0
        ledger = read_ledger(settings.data_dir)
    except FileNotFoundError as exc:
        print(f"saga-participant: {exc}", file=sys.stderr)
        return 1
    print(dump_ledger(ledger) if args.json else format_ledger(ledger))
    return 0


def _run(service: str, settings: ServiceSettings) -> int:
    if settings.http_port is None:
        settings = settings.model_copy(update={"http_port": DEFAULT_HTTP_PORTS[service]})
    options = {"name": settings.participant_name} if settings.participant_name else {}
    try:
        participant = build(service, settings.data_dir, settings=settings, **options)
    except TracingSettingsError as exc:  # OTEL_* asking for what this build has not
        print(f"saga-participant: {service}: {exc}", file=sys.stderr)
        return 2
    try:
        participant.run_forever()
    except OSError as exc:
        # A busy probe port (saga_plumbing.PortInUse), a data directory it cannot write: say so and exit
        # non-zero, so that a supervisor restarts it rather than keeping a process that serves nothing.
        print(f"saga-participant: {service}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
