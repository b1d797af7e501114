"""The operator's settings: one typed class, read from the environment once, before anything starts.

Each field is the variable `SAGA_<FIELD>` (upper case), except `kubeconfig` (`KUBECONFIG`, as kubectl reads
it) and `kafka`, saga_plumbing's `KafkaSettings` with variables of its own (`KAFKA_*`). A value that does
not parse is `InvalidSettings`, whose message names the variable; `python -m saga_operator` then exits
with status 2. The configuration table in docs/operations.md is generated from these fields
(`python -m saga_operator.config --update docs/operations.md`, part of `make generate`) and a test keeps
it in step.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from saga_plumbing import KafkaSettings
from saga_protocol import REPLY_DEAD_LETTER_TOPIC, command_topic


class Settings(BaseSettings):
    # env_ignore_empty: a variable set to nothing (`SAGA_NAMESPACE=` in a ConfigMap) means its default.
    model_config = SettingsConfigDict(
        env_prefix="SAGA_", env_ignore_empty=True, frozen=True, extra="ignore", populate_by_name=True
    )

    namespace: str = Field(
        default="", description="Watch Sagas in this namespace only. Empty: every namespace (the ClusterRole)."
    )
    reply_dead_letter_topic: str = Field(
        default=REPLY_DEAD_LETTER_TOPIC,
        description="Where replies that cannot be applied are set aside (replies are read from "
        "`saga.replies.<participant>`, one topic per participant).",
    )
    consumer_group: str = Field(
        default="saga-operator",
        description="The reply consumer's group. The replicas of one installation share it: with SAGA_PARTICIPANTS "
        "set, the group shards the sagas among them by the partition of their uid (docs/architecture.md).",
    )
    group_session_timeout_seconds: float = Field(
        default=10,
        ge=6,
        le=300,
        description="A replica that sends the group no heartbeat for this long (killed, frozen, cut off) is "
        "dropped and its shards go to the others: with the heartbeat below, the bound on a failover. Within the "
        "broker's `group.min.session.timeout.ms`/`group.max.session.timeout.ms` (6 s and 30 min by default).",
    )
    group_heartbeat_seconds: float = Field(
        default=1,
        gt=0,
        le=60,
        description="How often a replica heartbeats to the group; also how soon it hears of a rebalance. Below a "
        "third of SAGA_GROUP_SESSION_TIMEOUT_SECONDS.",
    )
    participants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated participant names whose command and reply topics are read (and, with "
        "SAGA_CREATE_TOPICS, created) from start-up. When set, these are the only participants: a saga naming another "
        "is refused (phase Rejected, reason UnknownParticipant). Empty: any name goes, its reply topic read from its "
        "first command.",
    )
    reply_stall_seconds: float = Field(
        default=60,
        gt=0,
        description="A reply read but not applied for this long (its saga's status writes hang or fail) makes "
        "`/readyz` answer 503; `saga_operator_reply_lag_seconds` says how long the oldest one has waited.",
    )
    create_topics: bool = Field(
        default=False,
        description="`true`: create the dead-letter topic and each participant's command and reply topics at "
        "start-up and on first use (a development broker; the principal then needs Create). Off: an admin creates "
        "them beforehand (the Job `kafka-topics`), and the operator needs no right to create topics.",
    )
    topic_partitions: int = Field(
        default=6, ge=1, description="Partitions of the topics the operator creates (with SAGA_CREATE_TOPICS)."
    )
    topic_replication_factor: int = Field(
        default=1, ge=1, description="Their replication factor (3 on a real Kafka cluster)."
    )
    http_host: str = Field(default="0.0.0.0", description="Address of the probe and metrics server.")
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Its port: `/healthz`, `/readyz`, `/metrics`. Already in use: the operator exits (status 1).",
    )
    max_backoff_seconds: float = Field(
        default=30,
        ge=1,
        description="Cap of the backoff between attempts while the API server or Kafka is away.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete a Succeeded or Compensated saga this many seconds after it finished, unless its "
        "`spec.ttlSecondsAfterFinished` says otherwise (Failed and Rejected sagas are never deleted). Unset: off, "
        "finished sagas stay until someone deletes them.",
    )
    kube_proxy_from_env: bool = Field(
        default=False,
        description="`true`: reach the API server through `HTTPS_PROXY`/`NO_PROXY` and `~/.netrc` (off: they "
        "cost CPU on every request; a kubeconfig's `proxy-url` works either way).",
    )
    kubeconfig: str | None = Field(
        default=None,
        validation_alias="KUBECONFIG",
        description="Outside a cluster, the kubeconfig to use. Unset: the in-cluster ServiceAccount, else "
        "`~/.kube/config`.",
    )
    status_key_file: str | None = Field(
        default=None,
        description="A file (a mounted Secret) holding the key, at least 32 bytes, that signs every status the "
        "operator writes (`status.digest`); a status it did not sign is not adopted. Unset: no digests (a warning "
        "at start-up); the production manifests set it.",
    )
    status_writes: Literal["behind", "strict"] = Field(
        default="behind",
        description="`behind`: a saga's status is written before a command only where the saga rules need it (the "
        "pivot, the decision to undo, a retry, the end) and otherwise at most once per SAGA_STATUS_COALESCE_MS; "
        '`strict`: before every command (one status write per step). docs/architecture.md, "Writing the log '
        'behind"; figures in docs/performance.md.',
    )
    status_coalesce_ms: int = Field(
        default=1000,
        ge=1,
        le=60_000,
        description="With SAGA_STATUS_WRITES=behind: the longest a change waits in memory before it is written; "
        "how far `kubectl get sagas` may lag.",
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description="How to reach the brokers: the `KAFKA_*` variables."
    )

    @field_validator("participants", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        for name in value:
            command_topic(name)  # raises ValueError for a name that is not a DNS label
        return value


MIN_STATUS_KEY_BYTES = 32


def read_status_key(path: str | None) -> bytes | None:
    """The status key from its file (surrounding whitespace dropped), None when no file is set. Raises
    InvalidSettings for a file that cannot be read or a key that is too short."""
    if not path:
        return None
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidSettings(f"SAGA_STATUS_KEY_FILE={path!r}: cannot be read: {exc.strerror}") from None
    if len(key) < MIN_STATUS_KEY_BYTES:
        raise InvalidSettings(
            f"SAGA_STATUS_KEY_FILE={path!r}: the key is {len(key)} bytes, at least {MIN_STATUS_KEY_BYTES} are needed"
        )
    return key


class InvalidSettings(ValueError):
    """Settings the operator cannot start with; the message names each variable and what is wrong."""


def load(**overrides: Any) -> Settings:
    """The settings from the environment (`overrides` win: the command line's `--namespace`)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise InvalidSettings(_describe(exc)) from None
    read_status_key(settings.status_key_file)  # a key file that cannot be used stops the operator here
    return settings


# ---- the variables: names, for messages and for docs/operations.md --------------------------------------

_MODELS: dict[str, type[BaseSettings]] = {"Settings": Settings, "KafkaSettings": KafkaSettings}


def variable(model: type[BaseSettings], name: str, info: FieldInfo) -> str:
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def _variables(model: type[BaseSettings]) -> dict[str, str]:
    """Field name, and alias where there is one, to the variable."""
    names = {}
    for name, info in model.model_fields.items():
        names[name] = variable(model, name, info)
        if isinstance(info.validation_alias, str):
            names[info.validation_alias] = names[name]
    return names


def _describe(exc: ValidationError) -> str:
    names = _variables(_MODELS.get(exc.title, Settings))
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        name = names.get(str(error["loc"][0])) if error["loc"] else None
        # Without a name: a rule over several variables (KafkaSettings' SASL rules), whose message names them.
        problems.append(f"{name}={error['input']!r}: {message}" if name else message)
    return "invalid setting: " + "; ".join(problems)


def _rows() -> Iterator[tuple[str, str, str]]:
    for model in (Settings, KafkaSettings):
        for name, info in model.model_fields.items():
            if isinstance(info.default_factory, type) and issubclass(info.default_factory, BaseSettings):
                continue  # the nested KafkaSettings: its own rows follow
            yield (
                variable(model, name, info),
                _shown(info.get_default(call_default_factory=True)),
                info.description or "",
            )


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if default in ("", ()):
        return "empty"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table() -> str:
    """docs/operations.md's configuration table."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{env}` | {default} | {_cell(meaning)} |" for env, default, meaning in _rows()]
    return "\n".join(lines) + "\n"


_BEGIN = "<!-- settings table: generated from saga_operator.config by `make generate`; edit the fields -->\n"
_END = "<!-- end of settings table -->\n"


def spliced(document: str) -> str:
    """`document` with the text between the table's markers replaced by the table of today's fields."""
    pattern = re.compile(re.escape(_BEGIN) + r".*?" + re.escape(_END), re.DOTALL)
    if not pattern.search(document):
        raise ValueError("the settings table's markers are missing")
    return pattern.sub(lambda _: _BEGIN + settings_table() + _END, document)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saga_operator.config", description=__doc__.split("\n")[0])
    parser.add_argument("--update", type=Path, help="rewrite the table in this Markdown file (between its markers)")
    args = parser.parse_args(argv)
    if args.update is None:
        sys.stdout.write(settings_table())
        return
    args.update.write_text(spliced(args.update.read_text()))


if __name__ == "__main__":
    main()
