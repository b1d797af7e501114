"""Topic names. One command topic per participant, one reply topic read by the operator."""

import re

REPLY_TOPIC = "saga.replies"
_PARTICIPANT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def command_topic(participant: str) -> str:
    """The topic a participant consumes its commands from."""
    if not _PARTICIPANT.match(participant):
        raise ValueError(f"participant name {participant!r} is not a DNS label")
    return f"saga.commands.{participant}"


def dead_letter_topic(topic: str) -> str:
    """Where messages that cannot be decoded or applied are set aside, with the reason in a header."""
    return f"{topic}.dlq"
