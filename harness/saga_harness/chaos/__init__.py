"""`make chaos`: many buy-video sagas while everything breaks, then an audit of the books.

The run, Jepsen-style: a seeded plan of N sagas (business failures, participants slower than the step
timeout, transient participant errors, aborts by `kubectl patch`) is applied to a real stack while a fault
injector

* SIGKILLs the operator every few seconds and starts it again,
* kills the Kafka broker once and restarts it (same ports, same data directory),
* freezes the API server once (SIGSTOP, then SIGCONT),
* SIGKILLs and restarts each participant once,
* re-delivers real commands and replies (copies of messages read back from the topics), and
* feeds malformed replies to the operator and malformed commands to the participants.

Then the faults stop, every saga is waited for, the topics are drained, and the books are checked:
every saga terminal; per saga the participants' rows match the outcome; money conserved; nothing
applied twice; every malformed message dead-lettered with the right reason and nothing else
dead-lettered. Each violation names its saga; the exit status is 1 if there is any (2 if the run itself
could not be carried out). See docs/chaos.md.

    python -m saga_harness.chaos [--sagas 300] [--seed N] [--stack-dir DIR] [--keep DIR]

The modules, in the order a run goes through them:

* `plan`: `ChaosConfig` and the seeded mix of sagas (`plan`);
* `world`: `ChaosWorld`, a saga world of its own (namespace, topics, participant names), and the
  run's accounts;
* `storm`: the run's concurrent parts side by side: `drivers` (apply, abort), `schedule` (the faults),
  `redelivery` (copies of real messages), `malformed` (made-up messages and their injector),
  `observers` (the phases as they move; the end: every saga terminal, every topic drained), `aio`;
* `books`: the participants' databases, read back; `audit`: the checks; `report`: the figures;
* `run`: `run_chaos`, all of the above on a stack; `cli`: `main`, the command line (`__main__`);
* `probes`: HTTP status and polling helpers for the chaos tests;
"""

from __future__ import annotations

from ..topics import read_topic
from .audit import audit, audit_dead_letters
from .books import read_books
from .cli import main
from .malformed import Injector, make_malformed_command, make_malformed_reply
from .plan import ChaosConfig, SagaPlan, plan
from .probes import http_status, wait_until
from .redelivery import Redeliverer
from .report import ChaosReport, format_report
from .run import ChaosError, run_chaos
from .world import ChaosWorld

__all__ = [
    "ChaosConfig",
    "ChaosError",
    "ChaosReport",
    "ChaosWorld",
    "Injector",
    "Redeliverer",
    "SagaPlan",
    "audit",
    "audit_dead_letters",
    "format_report",
    "http_status",
    "main",
    "make_malformed_command",
    "make_malformed_reply",
    "plan",
    "read_books",
    "read_topic",
    "run_chaos",
    "wait_until",
]
