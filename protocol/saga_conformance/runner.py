"""One run of the kit: topics, the reader, the participant (when the kit runs it), the rules in order."""

from __future__ import annotations

import logging
import time

from saga_conformance.config import FOREIGN_REPLY_TOPIC, KitConfig
from saga_conformance.kit import Kit
from saga_conformance.process import ParticipantProcess
from saga_conformance.report import Verdict, failed
from saga_conformance.rules import BY_NAME, RULES, Rule
from saga_conformance.wire import KitError, Wire
from saga_protocol import DEAD_LETTER_PARTITIONS, command_topic, dead_letter_topic

log = logging.getLogger(__name__)


def selected(cfg: KitConfig) -> list[Rule]:
    unknown = (cfg.only | cfg.skip) - set(BY_NAME)
    if unknown:
        raise KitError(f"no such rule: {', '.join(sorted(unknown))} (see --list-rules)")
    return [r for r in RULES if (not cfg.only or r.name in cfg.only) and r.name not in cfg.skip]


async def run(cfg: KitConfig) -> list[Verdict]:
    """Run the selected rules against the participant; KitError when the kit cannot run at all."""
    rules = selected(cfg)
    commands = command_topic(cfg.participant)
    layout = {
        commands: cfg.partitions,
        dead_letter_topic(commands): DEAD_LETTER_PARTITIONS,
        cfg.trusted_reply_topic: cfg.partitions,
        FOREIGN_REPLY_TOPIC: DEAD_LETTER_PARTITIONS,
    }
    wire = Wire(
        cfg.kafka,
        read=[cfg.trusted_reply_topic, dead_letter_topic(commands), FOREIGN_REPLY_TOPIC],
        reply_topics=[cfg.trusted_reply_topic, FOREIGN_REPLY_TOPIC],
    )
    await wire.ensure(layout, cfg.create_topics)
    await wire.start(list(layout))
    process = ParticipantProcess(cfg.participant_command, cfg.log_dir) if cfg.participant_command else None
    kit = Kit(cfg, wire, process)
    verdicts: list[Verdict] = []
    try:
        if process is not None:
            process.start()
            log.info("participant started: %s (log %s)", cfg.participant_command, process.log_path)
        await kit.ready()
        for rule in rules:
            began = time.monotonic()
            log.info("rule %s", rule.name)
            try:
                verdict = await rule.check(kit)
            except KitError:
                raise
            except Exception as exc:  # a rule that cannot finish is a failure of that rule, not of the run
                log.exception("rule %s raised", rule.name)
                verdict = failed(rule.name, f"the check raised {type(exc).__name__}: {exc}")
            verdicts.append(Verdict(verdict.rule, verdict.status, verdict.detail, time.monotonic() - began))
    finally:
        if process is not None:
            process.stop()
        await wire.stop()
    return verdicts
