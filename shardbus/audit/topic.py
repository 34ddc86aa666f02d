"""The audit topic on Kafka: creating it, and finding the head of one partition's chain.

The writer creates ``{p}.audit`` with :data:`TOPIC_CONFIG`, which keeps
records forever. A topic that someone else created keeps its settings, and
the writer logs a warning when its retention is not unlimited.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from schemas import codec
from schemas.audit import AuditRecord
from shardbus.audit.chain import GENESIS_HASH, record_hash, verify_record
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import DecodeError, IntegrityError

log = logging.getLogger(__name__)

#: Partitions of a new audit topic: one per role (controller, authorizer,
#: reassembler, provisioner) and four spare for extra instances.
AUDIT_PARTITIONS = 8

#: Settings of a new audit topic. retention.ms=-1 and retention.bytes=-1 keep
#: every record, and the delete policy means no record is ever compacted away.
TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}

# Kafka's error code for a topic that already exists.
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno

# Records read per step when searching backwards for the chain head. The
# window doubles while it finds no valid record.
_HEAD_WINDOW = 64


@dataclass(frozen=True)
class ChainHead:
    """The state of a partition's chain: the next sequence and the hash the next record must link to."""

    next_sequence: int
    prev_hash: bytes
    #: Offset of the record the head was read from, or -1 for an empty chain or a head kept in memory.
    offset: int


EMPTY_CHAIN = ChainHead(next_sequence=0, prev_hash=GENESIS_HASH, offset=-1)


async def ensure_audit_topic(admin: AIOKafkaAdminClient, topic: str, min_partitions: int) -> None:
    """Create the audit topic, or add partitions until it has `min_partitions`, and wait for leaders."""
    described = await _describe(admin, topic)
    if described is None:
        brokers = len((await admin.describe_cluster())["brokers"])
        partitions = max(AUDIT_PARTITIONS, min_partitions)
        new_topic = NewTopic(topic, partitions, min(3, brokers), topic_configs=TOPIC_CONFIG)
        response = await admin.create_topics([new_topic])
        for name, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise for_code(code)(f"creating the audit topic {name!r} failed: {message}")
        if all(code == 0 for _, code, _ in response.topic_errors):
            log.info("created audit topic %s with %d partitions and unlimited retention", topic, partitions)
    else:
        count = len(described["partitions"])
        if count < min_partitions:
            # Adding partitions is safe here because every writer names its
            # partition, so no record moves when the count changes.
            log.info("adding partitions to audit topic %s: %d -> %d", topic, count, min_partitions)
            await admin.create_partitions({topic: NewPartitions(total_count=min_partitions)})
        await _warn_on_retention(admin, topic)
    await _wait_for_leaders(admin, topic, min_partitions)


async def read_chain_head(
    consumer: AIOKafkaConsumer, topic: str, partition: int, verify_key: VerifyKey
) -> ChainHead:
    """Return the head of the chain on one partition: the newest record that decodes and verifies.

    Records after it that fail are skipped, so a writer continues the chain
    from its last real record and ``audit verify`` reports the others.
    `consumer` must be started and have no group.
    """
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    window_end = end
    window = _HEAD_WINDOW
    while window_end > begin:
        start = max(begin, window_end - window)
        records = await _read_range(consumer, tp, start, window_end)
        for offset, value in reversed(records):
            head = _head_from(value, offset, partition, verify_key)
            if head is not None:
                if offset != end - 1:
                    log.warning(
                        "audit partition %s:%d: %d records after offset %d do not verify; "
                        "continuing the chain from offset %d",
                        topic, partition, end - 1 - offset, offset, offset,
                    )
                return head
        window_end = start
        window *= 2
    if end > begin:
        log.warning("audit partition %s:%d contains no valid record; starting a new chain", topic, partition)
    return EMPTY_CHAIN


def _head_from(value: bytes | None, offset: int, partition: int, verify_key: VerifyKey) -> ChainHead | None:
    if value is None:
        return None
    try:
        record = codec.decode(value, AuditRecord)
        verify_record(record, partition, verify_key)
    except (DecodeError, IntegrityError):
        return None
    return ChainHead(next_sequence=record.sequence + 1, prev_hash=record_hash(value), offset=offset)


async def _read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int
) -> list[tuple[int, bytes | None]]:
    consumer.seek(tp, start)
    records: list[tuple[int, bytes | None]] = []
    while await consumer.position(tp) < stop:
        batch = await consumer.getmany(tp, timeout_ms=500)
        for message in batch.get(tp, []):
            if message.offset < stop:
                records.append((message.offset, message.value))
    return records


async def _describe(admin: AIOKafkaAdminClient, topic: str) -> dict | None:
    # Asking for a missing topic by name would let a broker with
    # auto.create.topics.enable create it with one partition, so the name is
    # looked up in the full list first.
    if topic not in await admin.list_topics():
        return None
    described = (await admin.describe_topics([topic]))[0]
    if described["error_code"] != 0 or not described["partitions"]:
        return None
    return described


async def _warn_on_retention(admin: AIOKafkaAdminClient, topic: str) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})
    responses = await admin.describe_configs([resource])
    for response in responses:
        for _code, _message, _type, _name, entries in response.resources:
            for entry in entries:
                name, value = entry[0], entry[1]
                if name == "retention.ms" and value != "-1":
                    log.warning(
                        "audit topic %s has retention.ms=%s, so Kafka deletes old audit records; "
                        "set retention.ms=-1 (kafka-configs.sh --alter --add-config retention.ms=-1)",
                        topic, value,
                    )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    # The caller bounds the whole start-up with its own timeout.
    while True:
        described = await _describe(admin, topic)
        if (
            described is not None
            and len(described["partitions"]) >= partitions
            and all(p["leader"] >= 0 for p in described["partitions"])
        ):
            return
        await asyncio.sleep(0.1)
