"""What the kit needs to know about the participant under test, from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saga_plumbing import KafkaSettings
from saga_protocol import DEFAULT_PARTITIONS, check_participant_name, reply_topic

#: The topic a command names when the kit checks that a participant refuses foreign reply topics. A dot
#: cannot be in a participant name, so this is nobody's reply topic.
FOREIGN_REPLY_TOPIC = "saga.replies.conformance.foreign"


@dataclass(frozen=True)
class KitConfig:
    participant: str
    action: str
    compensation: str
    payload: dict[str, Any]
    kafka: KafkaSettings
    failing_payload: dict[str, Any] | None = None
    slow_payload: dict[str, Any] | None = None
    slow_seconds: float = 5.0
    participant_command: str | None = None
    reply_topic: str = ""
    namespace: str = "conformance"
    foreign_namespace: str | None = None
    reply_timeout: float = 20.0
    quiet: float = 2.0
    start_timeout: float = 90.0
    create_topics: bool = True
    partitions: int = DEFAULT_PARTITIONS
    only: frozenset[str] = field(default_factory=frozenset)
    skip: frozenset[str] = field(default_factory=frozenset)
    log_dir: str | None = None

    @property
    def trusted_reply_topic(self) -> str:
        return self.reply_topic or reply_topic(self.participant)


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _name(text: str) -> str:
    try:
        return check_participant_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saga-conformance",
        description="Play the saga operator against a participant over a real broker and check protocol v2. "
        "Kafka security comes from the KAFKA_* environment (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
        "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_FILE). "
        "Exit status: 0 all rules passed or not tested, 1 a rule failed, 2 the kit could not run.",
    )
    p.add_argument("--participant", type=_name, help="the participant's name (DNS label)")
    p.add_argument("--action", help="an action handler the participant has")
    p.add_argument("--compensation", help="the compensation handler of that action")
    p.add_argument("--payload", type=_object, help="a saga payload with which the action succeeds")
    p.add_argument("--failing-payload", type=_object, help="a payload with which the action fails (business)")
    p.add_argument(
        "--slow-payload",
        type=_object,
        help="fields merged into the payload to make the action take --slow-seconds (the participant's own switch)",
    )
    p.add_argument(
        "--slow-simulate",
        action="store_true",
        help='use the SDK convention: {"simulate": {"<participant>": {"delaySeconds": S, "delayAttempts": 1}}}',
    )
    p.add_argument("--slow-seconds", type=float, default=5.0)
    p.add_argument("--participant-command", help="shell command line that runs the participant (kit starts, kills it)")
    p.add_argument("--bootstrap-servers", help="host:port[,...] (default: KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--reply-topic", default="", help="the reply topic the participant trusts (saga.replies.<name>)")
    p.add_argument("--namespace", default="conformance", help="sagaNamespace of the kit's commands")
    p.add_argument("--foreign-namespace", help="a namespace the participant is configured to refuse")
    p.add_argument("--reply-timeout", type=float, default=20.0, help="seconds to wait for an expected message")
    p.add_argument("--quiet", type=float, default=2.0, help="seconds of silence that prove nothing else comes")
    p.add_argument("--start-timeout", type=float, default=90.0, help="seconds for the participant to answer a probe")
    p.add_argument("--no-create-topics", action="store_true", help="the admin created the topics; only check them")
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="of topics the kit creates")
    p.add_argument("--only", default="", help="comma-separated rule names to run")
    p.add_argument("--skip", default="", help="comma-separated rule names not to run")
    p.add_argument("--json", dest="json_path", help="also write the verdicts as JSON to this file")
    p.add_argument("--log-dir", help="where the participant's output goes (default: a temporary folder)")
    p.add_argument("--list-rules", action="store_true", help="print the rules and exit")
    return p


def from_args(args: argparse.Namespace) -> KitConfig:
    """The configuration; KafkaSettings reads the KAFKA_* environment (the flag wins for the bootstrap)."""
    overrides: dict[str, Any] = {}
    if args.bootstrap_servers:
        overrides["bootstrap_servers"] = args.bootstrap_servers
    kafka = KafkaSettings(**overrides)
    slow = args.slow_payload
    if args.slow_simulate:
        slow = {"simulate": {args.participant: {"delaySeconds": args.slow_seconds, "delayAttempts": 1}}}
    return KitConfig(
        participant=args.participant,
        action=args.action,
        compensation=args.compensation,
        payload=args.payload,
        kafka=kafka,
        failing_payload=args.failing_payload,
        slow_payload=slow,
        slow_seconds=args.slow_seconds,
        participant_command=args.participant_command,
        reply_topic=args.reply_topic,
        namespace=args.namespace,
        foreign_namespace=args.foreign_namespace,
        reply_timeout=args.reply_timeout,
        quiet=args.quiet,
        start_timeout=args.start_timeout,
        create_topics=not args.no_create_topics,
        partitions=args.partitions,
        only=_names(args.only),
        skip=_names(args.skip),
        log_dir=args.log_dir,
    )


def _names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    missing = [f"--{n}" for n in ("participant", "action", "compensation", "payload") if getattr(args, n) is None]
    if missing and not args.list_rules:
        p.error(f"the following arguments are required: {', '.join(missing)}")
    return args
