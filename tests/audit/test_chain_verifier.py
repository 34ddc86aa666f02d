"""The chain format and ChainVerifier on hand-built chains, without Kafka."""

from __future__ import annotations

import dataclasses

import pytest

from audit_support import altered, build_chain, fixed_key, reencoded, unsigned
from schemas import codec
from schemas.audit import AuditRecord
from shardbus.audit.chain import (
    GENESIS_HASH,
    SIGNATURE_CONTEXT,
    record_hash,
    sign_record,
    signed_bytes,
    verify_record,
)
from shardbus.audit.verify import BreakKind, ChainVerifier
from shardbus.errors import IntegrityError

KEY = fixed_key(1)
OTHER_KEY = fixed_key(2)


def feed_all(values: list[bytes | None], *, partition: int = 0, anchored: bool = False) -> list:
    verifier = ChainVerifier(KEY.verify_key, anchored=anchored)
    found = []
    for offset, value in enumerate(values):
        found.extend(verifier.feed(partition, offset, value))
    return found


def kinds_at(breaks: list) -> list[tuple[BreakKind, int]]:
    return [(found.kind, found.offset) for found in breaks]


def test_signed_bytes_cover_partition_and_not_signature():
    record = sign_record(unsigned(3, detail="x"), 5, KEY)
    data = signed_bytes(record, 5)
    assert data.startswith(SIGNATURE_CONTEXT + (5).to_bytes(4, "big"))
    assert data == signed_bytes(dataclasses.replace(record, signature=b""), 5)
    assert data[len(SIGNATURE_CONTEXT) + 4 :] == codec.encode(dataclasses.replace(record, signature=b""))
    assert data != signed_bytes(record, 6)


def test_verify_record_rejects_other_partition_and_key():
    record = sign_record(unsigned(0), 1, KEY)
    verify_record(record, 1, KEY.verify_key)
    with pytest.raises(IntegrityError):
        verify_record(record, 2, KEY.verify_key)
    with pytest.raises(IntegrityError):
        verify_record(record, 1, OTHER_KEY.verify_key)
    with pytest.raises(IntegrityError):
        verify_record(dataclasses.replace(record, signature=b""), 1, KEY.verify_key)


def test_chain_links_hash_of_stored_value():
    values = build_chain(KEY, 0, 3)
    first = codec.decode(values[0], AuditRecord)
    second = codec.decode(values[1], AuditRecord)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == record_hash(values[0])
    assert second.sequence == 1


def test_intact_chain_has_no_breaks():
    assert feed_all(build_chain(KEY, 0, 20)) == []


def test_dropped_record_is_a_gap():
    values = build_chain(KEY, 0, 5)
    breaks = feed_all(values[:2] + values[3:])
    assert kinds_at(breaks) == [(BreakKind.SEQUENCE_GAP, 2)]
    assert "expected sequence 2, got 3" in breaks[0].detail


def test_altered_record_is_one_bad_signature():
    values = build_chain(KEY, 0, 5)
    values[2] = altered(values[2], detail="nothing to see")
    breaks = feed_all(values)
    assert kinds_at(breaks) == [(BreakKind.BAD_SIGNATURE, 2)]
    assert breaks[0].sequence == 2


def test_forged_insert_is_one_bad_signature():
    values = build_chain(KEY, 0, 4)
    forged = codec.encode(sign_record(unsigned(2, detail="forged"), 0, OTHER_KEY))
    breaks = feed_all(values[:2] + [forged] + values[2:])
    assert kinds_at(breaks) == [(BreakKind.BAD_SIGNATURE, 2)]


def test_junk_insert_is_undecodable():
    values = build_chain(KEY, 0, 4)
    breaks = feed_all(values[:1] + [b"\x00junk", None] + values[1:])
    assert kinds_at(breaks) == [(BreakKind.UNDECODABLE, 1), (BreakKind.UNDECODABLE, 2)]


def test_unsigned_record_is_a_bad_signature():
    values = build_chain(KEY, 0, 3)
    values[1] = altered(values[1], signature=b"")
    breaks = feed_all(values)
    assert kinds_at(breaks) == [(BreakKind.BAD_SIGNATURE, 1)]
    assert "no signature" in breaks[0].detail


def test_copy_of_earlier_record_is_duplicate():
    values = build_chain(KEY, 0, 4)
    breaks = feed_all(values + [values[1]])
    assert kinds_at(breaks) == [(BreakKind.DUPLICATE, 4)]
    assert "offset 1" in breaks[0].detail


def test_reordered_records_are_caught():
    values = build_chain(KEY, 0, 5)
    breaks = feed_all([values[0], values[1], values[3], values[2], values[4]])
    assert kinds_at(breaks) == [(BreakKind.SEQUENCE_GAP, 2), (BreakKind.REORDERED, 3)]
    assert "filling the gap reported at offset 2" in breaks[1].detail


def test_record_from_other_partition_fails():
    assert kinds_at(feed_all(build_chain(KEY, 0, 1), partition=1)) == [(BreakKind.BAD_SIGNATURE, 0)]


def test_missing_start_is_bad_start():
    values = build_chain(KEY, 0, 5)
    assert kinds_at(feed_all(values[2:])) == [(BreakKind.BAD_START, 0)]


def test_anchored_read_trusts_first_record():
    values = build_chain(KEY, 0, 5)
    assert feed_all(values[2:], anchored=True) == []


def test_fork_is_hash_mismatch():
    values = build_chain(KEY, 0, 3)
    other_branch = codec.encode(sign_record(unsigned(3, prev_hash=bytes(range(32))), 0, KEY))
    assert kinds_at(feed_all(values + [other_branch])) == [(BreakKind.HASH_MISMATCH, 3)]


def test_reencoded_record_is_not_canonical():
    values = build_chain(KEY, 0, 4)
    values[1] = reencoded(values[1])
    assert codec.decode(values[1], AuditRecord) == codec.decode(build_chain(KEY, 0, 2)[1], AuditRecord)
    assert kinds_at(feed_all(values)) == [(BreakKind.NOT_CANONICAL, 1)]


def test_partitions_are_checked_apart():
    verifier = ChainVerifier(KEY.verify_key)
    chain_a, chain_b = build_chain(KEY, 0, 3), build_chain(KEY, 1, 3)
    found = []
    for offset in range(3):
        found += verifier.feed(0, offset, chain_a[offset])
        found += verifier.feed(1, offset, chain_b[offset])
    assert found == []
    assert verifier.partitions[0].head_sequence == 2
    assert verifier.partitions[1].valid == 3
