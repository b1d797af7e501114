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
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from saga_plumbing import KafkaSettings
from saga_protocol import REPLY_TOPIC, command_topic


class Settings(BaseSettings):
    # env_ignore_empty: a variable set to nothing (`SAGA_NAMESPACE=` in a ConfigMap) means its default.
    model_config = SettingsConfigDict(
        env_prefix="SAGA_", env_ignore_empty=True, frozen=True, extra="ignore", populate_by_name=True
    )

    namespace: str = Field(
        default="", description="Watch Sagas in this namespace only. Empty: every namespace (the ClusterRole)."
    )
    reply_topic: str = Field(
        default=REPLY_TOPIC, description="The topic participants reply to; its dead-letter topic is `<topic>.dlq`."
    )
    consumer_group: str = Field(default="saga-operator", description="The reply consumer's group.")
    participants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated participant names whose command topics are created at start-up with "
        "SAGA_CREATE_TOPICS (the others are created on first use).",
    )
    create_topics: bool = Field(
        default=False,
        description="`true`: create the reply topic, its dead-letter topic and the command topics at start-up and "
        "on first use (a development broker; the principal then needs Create). Off: an admin creates them "
        "beforehand (the Job `kafka-topics`), and the operator needs no right to create topics.",
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


class InvalidSettings(ValueError):
    """Settings the operator cannot start with; the message names each variable and what is wrong."""


def load(**overrides: Any) -> Settings:
    """The settings from the environment (`overrides` win: the command line's `--namespace`)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise InvalidSettings(_describe(exc)) from None


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
