"""saga-conformance: plays the operator against any saga participant over a real Kafka broker.

It sends commands (fresh, duplicated, redelivered, compensations before and after their actions,
malformed ones, foreign ones) to `saga.commands.<participant>`, reads `saga.replies.<participant>` and
`saga.commands.<participant>.dlq`, and reports each rule of docs/protocol.md as pass, fail or not tested.
It can start, kill and restart the participant itself (`--participant-command`). See docs/participants.md,
"Conformance".
"""

from saga_conformance.report import Status, Verdict
from saga_conformance.runner import run

__all__ = ["Status", "Verdict", "run"]
