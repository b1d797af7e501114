"""The seed's buy-video saga on the SDK: three services, each its own process and its own SQLite file.

    videos  record-purchase / remove-purchase
    users   debit           / refund            (InsufficientFunds, UnknownUser)
    agents  credit          / reverse-credit    (UnknownAgent, AgentClosed)

Payload: `{"buyer": "alice", "video": "v-42", "price": 1500, "agent": "bob-agency"}` (price in cents).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from saga_buyvideo import agents, users, videos
from saga_participants import Participant

Factory = Callable[..., Participant]

#: Service name -> factory(database, *, name=..., **Participant options).
SERVICES: Final[dict[str, Factory]] = {
    videos.NAME: videos.participant,
    users.NAME: users.participant,
    agents.NAME: agents.participant,
}
#: Service name -> its SQL schema (the seed and the ledger open the files without a Participant).
SCHEMAS: Final[dict[str, str]] = {videos.NAME: videos.SCHEMA, users.NAME: users.SCHEMA, agents.NAME: agents.SCHEMA}


def database_path(data_dir: str | os.PathLike[str], service: str) -> str:
    """Where a service keeps its database: one file per service, `<data-dir>/<service>.db`."""
    return os.path.join(os.fspath(data_dir), f"{service}.db")


def build(service: str, data_dir: str | os.PathLike[str], **options: Any) -> Participant:
    return SERVICES[service](database_path(data_dir, service), **options)


__all__ = ["SCHEMAS", "SERVICES", "build", "database_path"]
