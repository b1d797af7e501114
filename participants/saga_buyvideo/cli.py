"""`saga-participant`: run a buy-video service, seed its demo data, print the ledgers.

    saga-participant run videos|users|agents [--data-dir DIR] [--bootstrap-servers HOST:PORT] [--http-port N]
    saga-participant seed [--data-dir DIR] [--reset]
    saga-participant ledger [--data-dir DIR] [--json]

Every option has an environment variable (flags win): SAGA_DATA_DIR, KAFKA_BOOTSTRAP_SERVERS,
SAGA_HTTP_PORT, SAGA_HTTP_HOST, SAGA_PARTICIPANT_NAME, SAGA_LOG_LEVEL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final

from saga_buyvideo import SERVICES, build
from saga_buyvideo.demo import dump_ledger, format_ledger, read_ledger, seed

#: Default HTTP ports, distinct so that the three services can run side by side on one machine.
DEFAULT_HTTP_PORTS: Final = {"videos": 8081, "users": 8082, "agents": 8083}


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"saga-participant: {name}={raw!r} is not an integer") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saga-participant", description="The buy-video saga's participant services.")
    parser.add_argument(
        "--log-level", default=os.environ.get("SAGA_LOG_LEVEL", "INFO"), help="logging level (env SAGA_LOG_LEVEL)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    data_dir = os.environ.get("SAGA_DATA_DIR", "data")

    run = commands.add_parser("run", help="run one service until SIGTERM")
    run.add_argument("service", choices=sorted(SERVICES))
    run.add_argument("--data-dir", default=data_dir, help="where <service>.db lives (env SAGA_DATA_DIR)")
    run.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)",
    )
    run.add_argument(
        "--http-port",
        type=int,
        default=_env_int("SAGA_HTTP_PORT"),
        help="port of /healthz /readyz /metrics; 0 picks a free one (env SAGA_HTTP_PORT; "
        "default videos 8081, users 8082, agents 8083)",
    )
    run.add_argument("--http-host", default=os.environ.get("SAGA_HTTP_HOST", "127.0.0.1"), help="(env SAGA_HTTP_HOST)")
    run.add_argument(
        "--name",
        default=os.environ.get("SAGA_PARTICIPANT_NAME"),
        help="participant name, hence topic saga.commands.<name> and group saga-participant-<name> "
        "(default: the service; env SAGA_PARTICIPANT_NAME)",
    )

    seed_cmd = commands.add_parser("seed", help="create the three databases with demo users and agents")
    seed_cmd.add_argument("--data-dir", default=data_dir, help="(env SAGA_DATA_DIR)")
    seed_cmd.add_argument("--reset", action="store_true", help="empty every table first (inbox included)")

    ledger = commands.add_parser("ledger", help="print balances, purchases, credits and the money total")
    ledger.add_argument("--data-dir", default=data_dir, help="(env SAGA_DATA_DIR)")
    ledger.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
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
        port = args.http_port if args.http_port is not None else DEFAULT_HTTP_PORTS[args.service]
        options = {"name": args.name} if args.name else {}
        participant = build(
            args.service,
            args.data_dir,
            bootstrap_servers=args.bootstrap_servers,
            http_host=args.http_host,
            http_port=port,
            **options,
        )
        participant.run_forever()
        return 0
    try:
        if args.command == "seed":
            ledger = seed(args.data_dir, reset=args.reset)
            print(f"seeded {os.path.abspath(args.data_dir)}: money total {ledger['moneyTotal']} cents")
            return 0
        ledger = read_ledger(args.data_dir)
    except FileNotFoundError as exc:
        print(f"saga-participant: {exc}", file=sys.stderr)
        return 1
    print(dump_ledger(ledger) if args.json else format_ledger(ledger))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
