"""One whole chaos run on a stack: the world, the plan, the storm, the audit, the report."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from saga_protocol import dead_letter_topic
from saga_testenv.kafka import run_sync
from saga_testenv.stack import Stack, StackEndpoints

from .. import kafka_access
from ..faults import StackFaults
from ..topics import read_topic
from ..world import PARTICIPANTS
from .audit import Violation, audit, audit_dead_letters
from .books import read_books
from .plan import ChaosConfig, plan
from .report import ChaosReport
from .storm import Log, Storm
from .world import ChaosWorld


class ChaosError(RuntimeError):
    """The run could not be carried out (a service would not come back, the stack is foreign, ...)."""


def _say(message: str) -> None:
    print(message, flush=True)


def run_chaos(
    config: ChaosConfig,
    endpoints: StackEndpoints,
    run_dir: Path,
    *,
    log: Log = _say,
    operator_env: Mapping[str, str] | None = None,
) -> ChaosReport:
    """The whole run on a stack. Kafka restarts and API server pauses need a stack started here
    (`Stack`); on a foreign cluster those two faults are left out."""
    began = time.monotonic()
    faults = StackFaults(endpoints) if isinstance(endpoints, Stack) else None
    if faults is None and (config.restart_kafka or config.apiserver_pause):
        log("  (a foreign stack: the Kafka restart and the API server pause are left out)")
    cw = ChaosWorld(endpoints, run_dir / "world", operator_env=operator_env)
    cw.add_replicas(config.replicas - 1)
    accounts, plans = plan(config, cw.names)
    log(f"== chaos: {config.sagas} sagas, seed {config.seed}, namespace {cw.namespace}, run dir {run_dir}")
    cw.start(accounts)
    try:
        before = read_books(cw.data_dir)
        storm = Storm(config, cw, plans, faults, log)
        asyncio.run(storm.run())
        bodies = cw.bodies()
        after = read_books(cw.data_dir)
        violations, figures = audit(plans, bodies, before, after)
        uid_to_name = {b["metadata"]["uid"]: n for n, b in bodies.items()}
        dlq_topics = [
            cw.reply_dead_letter_topic,
            *(dead_letter_topic(cw.command_topic(s)) for s in PARTICIPANTS),
        ]
        dead = {t: run_sync(read_topic(kafka_access.client_options(endpoints), t)) for t in dlq_topics}
        dlq_violations, dlq_figures = audit_dead_letters(
            storm.injector.sent, dead, uid_to_name, reply_dead_letter_topic=cw.reply_dead_letter_topic
        )
        violations += dlq_violations
        violations += [Violation(None, problem) for problem in storm.tally.problems]
        t = storm.tally
        figures.update(dlq_figures)
        figures.update(
            {
                "operatorKills": t.operator_kills,
                "operatorStarts": sum(op.starts for op in cw.operators),
                "operatorReplicas": len(cw.operators),
                "rollingRestarts": t.rolling_restarts,
                "participantKills": dict(t.participant_kills),
                "kafkaRestarts": t.kafka_restarts,
                "kafkaDownSeconds": round(t.kafka_down_seconds, 1),
                "apiserverPauses": t.apiserver_pauses,
                "apiserverPausedSeconds": round(t.apiserver_paused_seconds, 1),
                "duplicatesInjected": dict(storm.redeliverer.copies),
                "duplicateErrors": storm.redeliverer.errors[-20:],
                "abortsSent": t.aborts_sent,
                "abortsMissed": t.aborts_missed,
                "notes": t.notes,
                "tags": dict(Counter(tag for p in plans for tag in p.tags)),
            }
        )
        phases = dict(Counter((b.get("status") or {}).get("phase", "") for b in bodies.values()))
        report = ChaosReport(config, time.monotonic() - began, phases, violations, figures, cw.namespace, str(run_dir))
        (run_dir / "report.json").write_text(report.to_json() + "\n")
        return report
    finally:
        cw.stop()
