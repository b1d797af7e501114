"""A participant that answers every command at once: `succeeded`, empty result, to the command's replyTopic.

    python -m saga_harness.bench.echo --topics saga.commands.a,saga.commands.b --group GROUP --http-port PORT

It connects like the operator and the SDK: saga_plumbing's KafkaSettings from the `KAFKA_*` variables
(security included; `--bootstrap` overrides KAFKA_BOOTSTRAP_SERVERS).

Built on raw aiokafka and the protocol models (docs/protocol.md), not on the participant SDK: the SDK
handles one record at a time through SQLite, which is right for money and wrong for a benchmark whose
subject is the coordinator. Here a batch of commands is decoded, every reply is produced, the batch's
acks are awaited and only then are the offsets committed (at-least-once, like a real participant), with
the same producer settings as the SDK (idempotent, acks=all). It keeps no state: the benchmark reads its
timings back from the messages themselves (the command's and the reply's `sentAt`).

/readyz answers 200 once the consumer has partitions of every topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from saga_plumbing import KafkaSettings
from saga_protocol import DecodeError, Outcome, answer, decode_command, encode_reply

log = logging.getLogger("saga_bench_echo")


def participant_of(topic: str) -> str:
    """saga.commands.<name> -> <name>"""
    return topic.rsplit(".", 1)[-1]


class Echo:
    def __init__(self, kafka: KafkaSettings, topics: list[str], group: str) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(
            *topics,
            **kafka.client_options("saga-bench-echo"),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1000,
        )
        self.producer = AIOKafkaProducer(**kafka.client_options("saga-bench-echo"), enable_idempotence=True, acks="all")
        self.replied = 0
        self.undecodable = 0
        self._stopping = asyncio.Event()

    def ready(self) -> bool:
        assigned = {tp.topic for tp in self.consumer.assignment()}
        return set(self.topics) <= assigned

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=1000)
                if batch:
                    await self._answer(batch)
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _answer(self, batch: dict[Any, list[Any]]) -> None:
        acks = []
        for tp, records in batch.items():
            name = participant_of(tp.topic)
            for record in records:
                headers = [(k, bytes(v)) for k, v in (record.headers or ())]
                try:
                    command = decode_command(record.value, headers)
                except DecodeError as exc:
                    self.undecodable += 1
                    log.warning("undecodable command at %s@%d: %s", tp, record.offset, exc)
                    continue
                reply = answer(command, name, Outcome.SUCCEEDED, result={})
                key, value, reply_headers = encode_reply(reply)
                acks.append(await self.producer.send(command.reply_topic, value, key=key, headers=reply_headers))
        if acks:
            await asyncio.gather(*acks)
            self.replied += len(acks)
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items() if records})


async def _serve(args: argparse.Namespace) -> None:
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap) if args.bootstrap else KafkaSettings()
    echo = Echo(kafka, [t for t in args.topics.split(",") if t], args.group)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, echo.stop)

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ready\n") if echo.ready() else web.Response(status=503, text="not ready\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=f"saga_bench_echo_replies_total {echo.replied}\n")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.http_port).start()
    try:
        await echo.run()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    log.info("echo participant stopped after %d replies", echo.replied)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga_harness.bench.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="host:port (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topics", required=True, help="comma-separated command topics")
    parser.add_argument("--group", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
