"""Topic, consumer-group and source names (docs/protocol.md, "Topics").

Per participant `p`: the operator writes `saga.commands.<p>`, `p` writes its replies to
`saga.replies.<p>` (only `p`'s principal may: that is what attributes a reply to `p`) and sets aside what
it cannot process on `saga.commands.<p>.dlq`. The operator sets aside bad replies on `saga.replies.dlq`.
Only the admin creates topics.
"""

from __future__ import annotations

import re
from typing import Final

#: The v1 shared reply topic. v2 replies go to `reply_topic(participant)` and the operator reads only those;
#: the name stays for the SDK's test defaults until they move to `reply_topic(name)`.
REPLY_TOPIC: Final = "saga.replies"
#: Where the operator sets aside replies it cannot decode or attribute.
REPLY_DEAD_LETTER_TOPIC: Final = "saga.replies.dlq"
#: The operator's consumer group (it reads every `saga.replies.<p>`).
OPERATOR_GROUP: Final = "saga-operator"
#: Partitions of a command topic and of a reply topic, unless the admin's setting says otherwise.
DEFAULT_PARTITIONS: Final = 6
#: A dead-letter topic has one partition: it is read by people, in order.
DEAD_LETTER_PARTITIONS: Final = 1

_PARTICIPANT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: Not a participant name: `saga.replies.dlq` is the operator's dead-letter topic.
RESERVED_NAMES: Final = frozenset({"dlq"})


def check_participant_name(participant: str) -> str:
    """The name itself when it is a DNS label and not reserved; ValueError otherwise."""
    if not _PARTICIPANT.match(participant):
        raise ValueError(f"participant name {participant!r} is not a DNS label")
    if participant in RESERVED_NAMES:
        raise ValueError(f"participant name {participant!r} is reserved")
    return participant


def command_topic(participant: str) -> str:
    """The topic a participant consumes its commands from."""
    return f"saga.commands.{check_participant_name(participant)}"


def reply_topic(participant: str) -> str:
    """The only topic a participant replies to, and the only one its principal may write replies to."""
    return f"saga.replies.{check_participant_name(participant)}"


def dead_letter_topic(topic: str) -> str:
    """Where messages that cannot be decoded or applied are set aside, with the reason in a header."""
    return f"{topic}.dlq"


def participant_group(participant: str) -> str:
    """The consumer group of a participant's command consumer."""
    return f"saga-participant-{check_participant_name(participant)}"


def operator_source(namespace: str) -> str:
    """`ce_source` of a command: the operator, for the saga's namespace."""
    return f"/saga-operator/{namespace}"


def participant_source(participant: str) -> str:
    """`ce_source` of a reply."""
    return f"/participants/{participant}"
