"""`saga-conformance`: the command line (docs/participants.md, "Conformance")."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from saga_conformance.config import from_args, parse
from saga_conformance.report import Status, summary, table, to_json
from saga_conformance.rules import RULES
from saga_conformance.runner import run
from saga_conformance.wire import KitError


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list_rules:
        for rule in RULES:
            print(f"{rule.name}: {rule.says}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        cfg = from_args(args)
    except ValidationError as exc:
        print(f"saga-conformance: Kafka settings: {exc}", file=sys.stderr)
        return 2
    try:
        verdicts = asyncio.run(run(cfg))
    except KitError as exc:
        print(f"saga-conformance: {exc}", file=sys.stderr)
        return 2
    kafka = cfg.kafka
    print(f"saga-conformance: participant {cfg.participant} via {kafka.bootstrap_servers} ({kafka.security_protocol})")
    print(table(verdicts))
    print(summary(verdicts))
    if args.json_path:
        Path(args.json_path).write_text(to_json(verdicts))
    return 1 if any(v.status is Status.FAIL for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
