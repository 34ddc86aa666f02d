"""`shardbus audit verify` on a real broker, with chains tampered with through a raw producer."""

from __future__ import annotations

import json

import pytest

from audit_support import T0, FakeClock, altered, build_chain, fixed_key, op_id, unsigned
from schemas import codec
from schemas.audit import AuditRecord
from shardbus.audit import AuditLog
from shardbus.audit.chain import sign_record

pytestmark = pytest.mark.integration


async def produce(producer, topic: str, partition: int, values: list[bytes]) -> None:
    """Produce `values` in order, each with its record's time as the Kafka timestamp, as AuditLog does."""
    for value in values:
        at_ms = codec.decode(value, AuditRecord).at_ms
        await producer.send_and_wait(topic, value, partition=partition, timestamp_ms=at_ms)


def break_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if json.loads(line)["type"] == "break"]


async def test_intact_chains_verify(audit_deployment, capsys):
    deployment = audit_deployment
    for role in ("controller", "authorizer"):
        async with AuditLog(deployment.bootstrap, deployment.topics, deployment.key, role=role) as audit:
            await audit.record_many(dict(action="fetch.sent", operation_id=op_id(n), holder_id="h1") for n in range(5))
    assert await deployment.cli("verify") == 0
    output = capsys.readouterr().out
    assert "BREAK" not in output
    assert "partition 1: 5 records, 5 valid, sequences 0..4, actors authorizer: intact" in output
    assert "all 10 records verify" in output


async def test_tampering_is_reported_with_offsets(audit_deployment, raw_producer, kafka_admin, capsys):
    deployment = audit_deployment
    topic = deployment.topics.audit
    await kafka_admin.create(topic, partitions=5)
    key = deployment.key

    # Partition 0: written by the controller's AuditLog, then a modified copy
    # of record 1 is produced after it.
    async with AuditLog(deployment.bootstrap, deployment.topics, key, role="controller", clock=FakeClock()) as audit:
        written = [await audit.record("secret.stored", secret_name=f"db/s{n}", secret_version=1) for n in range(3)]
    forged_copy = codec.encode(sign_record(written[1], 0, key))
    await raw_producer.send_and_wait(topic, altered(forged_copy, secret_name="db/other"), partition=0)

    # Partition 1: record 2 dropped. Partition 2: records 2 and 3 swapped.
    chain = build_chain(key, 1, 5)
    await produce(raw_producer, topic, 1, chain[:2] + chain[3:])
    chain = build_chain(key, 2, 5)
    await produce(raw_producer, topic, 2, [chain[0], chain[1], chain[3], chain[2], chain[4]])

    # Partition 3: a record signed by another key inserted at offset 2, and a
    # copy of record 0 at the end. Partition 4: record 1 altered in place.
    chain = build_chain(key, 3, 4)
    forged = codec.encode(sign_record(unsigned(2, detail="forged"), 3, fixed_key(99)))
    await produce(raw_producer, topic, 3, chain[:2] + [forged] + chain[2:] + [chain[0]])
    chain = build_chain(key, 4, 3)
    await produce(raw_producer, topic, 4, [chain[0], altered(chain[1], outcome="fine"), chain[2]])

    assert await deployment.cli("verify", "--format", "jsonl") == 1
    found = {(b["partition"], b["offset"], b["kind"]) for b in break_lines(capsys.readouterr().out)}
    assert found == {
        (0, 3, "bad_signature"),
        (1, 2, "sequence_gap"),
        (2, 2, "sequence_gap"),
        (2, 3, "reordered"),
        (3, 2, "bad_signature"),
        (3, 5, "duplicate"),
        (4, 1, "bad_signature"),
    }


async def test_text_output_names_partition_and_offset(audit_deployment, raw_producer, kafka_admin, capsys):
    deployment = audit_deployment
    await kafka_admin.create(deployment.topics.audit, partitions=1)
    chain = build_chain(deployment.key, 0, 4)
    await produce(raw_producer, deployment.topics.audit, 0, [chain[0], chain[2], chain[3]])
    assert await deployment.cli("verify") == 1
    output = capsys.readouterr().out
    assert "BREAK partition 0 offset 1: sequence_gap: expected sequence 1, got 2" in output
    assert "1 breaks in 3 records" in output


async def test_from_time_anchors_each_chain(audit_deployment, raw_producer, kafka_admin, capsys):
    deployment = audit_deployment
    await kafka_admin.create(deployment.topics.audit, partitions=1)
    chain = build_chain(deployment.key, 0, 6)
    # The gap is before T0 + 3, so the chain read from there is intact.
    await produce(raw_producer, deployment.topics.audit, 0, [chain[0], chain[2], chain[3], chain[4], chain[5]])
    assert await deployment.cli("verify") == 1
    capsys.readouterr()
    assert await deployment.cli("verify", "--from", str(T0 + 3)) == 0
    assert "sequences 3..5" in capsys.readouterr().out


async def test_wrong_public_key_fails_every_record(audit_deployment, tmp_path, capsys):
    deployment = audit_deployment
    async with AuditLog(deployment.bootstrap, deployment.topics, deployment.key, role="authorizer") as audit:
        await audit.record("request.accepted", operation_id=op_id(1))
    other = tmp_path / "other.pub"
    other.write_bytes(fixed_key(42).verify_key.to_pem())
    assert await deployment.cli("verify", "--public-key", str(other)) == 1
    assert "bad_signature" in capsys.readouterr().out


async def test_missing_topic_is_an_error(audit_deployment, capsys):
    assert await audit_deployment.cli("verify") == 2
    assert "does not exist" in capsys.readouterr().err
