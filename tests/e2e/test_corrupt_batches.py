"""What the broker does with a corrupt record batch produced to it (a raw Produce request, no client checks).

The reply pump handles batches that fail their CRC or do not decompress (runtime/replies.py). These tests pin
down whether such a batch can reach a topic at all: the broker validates every batch a producer sends (the CRC;
a compressed batch is decompressed and its records read), so it refuses both kinds, and the only unreadable
records a consumer can meet are those the broker can read but the client cannot (tests/e2e/test_reply_wire.py:
a header name that is not UTF-8), or those corrupted on disk after they were written.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from saga_harness import kafka_access
from saga_plumbing import TopicSpec, ensure_topics
from saga_testenv.kafka import run_sync
from saga_testenv.stack import StackEndpoints

GZIP = 1
# Magic v2 batch layout: baseOffset(8) batchLength(4) partitionLeaderEpoch(4) magic(1) crc(4) attributes...
CRC_AT, CRC_FROM = 17, 21


def _batch(compression: int) -> bytearray:
    builder = DefaultRecordBatchBuilder(2, compression, 0, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=None, key=b"k", value=b'{"a": "' + b"x" * 200 + b'"}', headers=[])
    return bytearray(builder.build())


def _bad_crc() -> bytes:
    batch = _batch(0)
    batch[-1] ^= 0xFF  # the CRC no longer matches
    return bytes(batch)


def _bad_gzip() -> bytes:
    batch = _batch(GZIP)
    # Garble the compressed records, then give the batch a CRC that matches the garbled bytes.
    for at in range(CRC_FROM + 40, len(batch) - 4):
        batch[at] ^= 0x5A
    batch[CRC_AT:CRC_FROM] = calc_crc32c(bytes(batch[CRC_FROM:])).to_bytes(4, "big")
    return bytes(batch)


async def _produce(options: dict[str, Any], topic: str, batch: bytes) -> str:
    client = AIOKafkaClient(**options)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, 0))
        response = await client.send(leader, ProduceRequest(None, -1, 10_000, [(topic, [(0, batch)])]))
        [(_, [partition])] = response.topics
        return str(for_code(partition[1]).__name__)
    finally:
        await client.close()


def test_the_broker_refuses_a_batch_whose_crc_is_wrong_or_that_does_not_decompress(stack: StackEndpoints) -> None:
    topic = f"saga.replies.corrupt-{uuid.uuid4().hex[:8]}"
    admin = kafka_access.client_options(stack)  # the admin on the secured listener
    run_sync(ensure_topics(kafka_access.kafka_settings(stack), [TopicSpec(topic, 1, 1)]))
    bad_crc = run_sync(_produce(admin, topic, _bad_crc()))
    bad_gzip = run_sync(_produce(admin, topic, _bad_gzip()))
    good = run_sync(_produce(admin, topic, bytes(_batch(GZIP))))
    assert good == "NoError"
    assert bad_crc == "CorruptRecordException"
    assert bad_gzip != "NoError"  # refused; the broker answers UNKNOWN_SERVER_ERROR (its decompression failed)
