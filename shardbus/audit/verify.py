"""Check the audit chains: signatures, sequence numbers and hash links, per partition.

``ChainVerifier`` is fed records one at a time, in offset order per
partition, and returns the breaks each one shows. It needs no Kafka, so the
same code checks a live topic (``verify_topic``) and records piped from kcat
(``shardbus.audit.dump``). What each break means:

- ``undecodable``: the value is not a valid AuditRecord (inserted junk).
- ``bad_signature``: the record decodes but its signature does not verify
  for this partition under the audit key: altered, forged, unsigned, or
  copied from another partition.
- ``not_canonical``: the record decodes and verifies but is not in the
  canonical encoding, so it was re-encoded after it was written.
- ``bad_start``: the first record read from the beginning is not sequence 0
  with a zero ``prev_hash``; older records are missing.
- ``sequence_gap``: sequence numbers were skipped, so records were dropped.
- ``hash_mismatch``: the sequence is the expected one but ``prev_hash``
  does not match the previous record, so the chain forked (two writers on
  one partition) or a record before it was replaced by a validly signed one.
- ``reordered``: a sequence number lower than expected that is not a copy,
  such as a skipped record arriving later.
- ``duplicate``: an exact copy of an earlier record.

After a record that fails to decode or verify, the next valid record is not
held to the hash link, because the failed record may be an altered version
of the real previous one. Its sequence must still fit, so one altered or
inserted record gives one break, not a cascade.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import codec
from schemas.audit import AuditRecord
from shardbus.audit.chain import GENESIS_HASH, record_hash, verify_record
from shardbus.audit.stream import TopicReader
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import ConfigError, DecodeError, IntegrityError

# Sequence numbers remembered per partition to tell a duplicate or a
# reordered record from other breaks.
_RECENT = 4096
# Gaps remembered per partition, to name the gap a reordered record fills.
_GAPS = 64


class BreakKind(enum.StrEnum):
    """The kinds of chain break, as described in the module docstring."""

    UNDECODABLE = "undecodable"
    BAD_SIGNATURE = "bad_signature"
    NOT_CANONICAL = "not_canonical"
    BAD_START = "bad_start"
    SEQUENCE_GAP = "sequence_gap"
    HASH_MISMATCH = "hash_mismatch"
    REORDERED = "reordered"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class ChainBreak:
    """One break: where it is, what kind, and a sentence about it."""

    partition: int
    offset: int
    kind: BreakKind
    #: The sequence number the record claims, or None when it does not decode.
    sequence: int | None
    detail: str

    def to_json(self) -> dict:
        return {
            "partition": self.partition, "offset": self.offset, "kind": str(self.kind),
            "sequence": self.sequence, "detail": self.detail,
        }


@dataclass
class PartitionState:
    """The verifier's state for one partition's chain."""

    partition: int
    records: int = 0
    valid: int = 0
    first_offset: int | None = None
    first_sequence: int | None = None
    expected: int | None = None
    prev_hash: bytes = GENESIS_HASH
    #: Offset of the newest valid record in the chain.
    head_offset: int | None = None
    #: Records since the last valid one that failed to decode or verify.
    bad_run: int = 0
    breaks: int = 0
    actors: set[str] = field(default_factory=set)
    recent: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    gaps: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_GAPS))

    @property
    def head_sequence(self) -> int | None:
        """The sequence of the newest valid record, or None before one."""
        return None if self.expected is None else self.expected - 1


class ChainVerifier:
    """A checker of the audit chains of every partition it is fed.

    `anchored` is for a read that starts at a time: the first valid record of
    each partition is then trusted as the start, because the records before
    it were not read.
    """

    def __init__(self, verify_key: VerifyKey, *, anchored: bool = False) -> None:
        if not isinstance(verify_key, VerifyKey):
            raise TypeError(f"verify_key must be a VerifyKey, got {type(verify_key).__name__}")
        self._key = verify_key
        self._anchored = anchored
        self.partitions: dict[int, PartitionState] = {}

    def feed(self, partition: int, offset: int, value: bytes | None) -> list[ChainBreak]:
        """Check one record; return the breaks it shows (usually none)."""
        state = self.partitions.get(partition)
        if state is None:
            state = self.partitions[partition] = PartitionState(partition)
        state.records += 1
        if state.first_offset is None:
            state.first_offset = offset
        breaks = self._check(state, offset, value)
        state.breaks += len(breaks)
        return breaks

    def _check(self, state: PartitionState, offset: int, value: bytes | None) -> list[ChainBreak]:
        def broken(kind: BreakKind, sequence: int | None, detail: str) -> ChainBreak:
            return ChainBreak(state.partition, offset, kind, sequence, detail)

        if value is None:
            state.bad_run += 1
            return [broken(BreakKind.UNDECODABLE, None, "the record has no value")]
        try:
            record = codec.decode(value, AuditRecord)
        except DecodeError as exc:
            state.bad_run += 1
            return [broken(BreakKind.UNDECODABLE, None, f"not a valid AuditRecord: {exc}")]
        try:
            verify_record(record, state.partition, self._key)
        except IntegrityError:
            state.bad_run += 1
            problem = "carries no signature" if not record.signature else "has a signature that does not verify"
            return [broken(
                BreakKind.BAD_SIGNATURE, record.sequence,
                f"sequence {record.sequence} by {record.actor!r} {problem} for partition {state.partition} "
                "under the audit key: altered, forged or copied from another partition",
            )]
        if codec.encode(record) != bytes(value):
            state.bad_run += 1
            return [broken(
                BreakKind.NOT_CANONICAL, record.sequence,
                f"sequence {record.sequence} verifies but is not canonically encoded, so it was re-encoded",
            )]
        state.valid += 1
        state.actors.add(record.actor)
        return self._link(state, record, record_hash(value), offset, broken)

    def _link(
        self, state: PartitionState, record: AuditRecord, digest: bytes, offset: int,
        broken: Callable[[BreakKind, int | None, str], ChainBreak],
    ) -> list[ChainBreak]:
        sequence, breaks = record.sequence, []
        if state.expected is None:
            state.first_sequence = sequence
            if not self._anchored and (sequence != 0 or record.prev_hash != GENESIS_HASH):
                breaks.append(broken(
                    BreakKind.BAD_START, sequence,
                    f"the first record read is sequence {sequence}, not 0 with a zero prev_hash, "
                    "so the records before it are missing",
                ))
            self._advance(state, sequence, digest, offset)
            return breaks

        expected, bad_run = state.expected, state.bad_run
        state.bad_run = 0
        if sequence < expected:
            known = state.recent.get(sequence)
            if known is not None and known[0] == digest:
                return [broken(
                    BreakKind.DUPLICATE, sequence, f"a copy of sequence {sequence} first seen at offset {known[1]}",
                )]
            gap = next((g for g in state.gaps if g[0] <= sequence <= g[1]), None)
            where = f", filling the gap reported at offset {gap[2]}" if gap else ""
            state.recent[sequence] = (digest, offset)
            return [broken(
                BreakKind.REORDERED, sequence,
                f"sequence {sequence} arrives after sequence {expected - 1}{where}",
            )]
        if sequence > expected + bad_run:
            missing = sequence - expected - bad_run
            breaks.append(broken(
                BreakKind.SEQUENCE_GAP, sequence,
                f"expected sequence {expected + bad_run}, got {sequence}: {missing} records were dropped",
            ))
            state.gaps.append((expected, sequence - 1, offset))
        elif sequence == expected and record.prev_hash != state.prev_hash:
            breaks.append(broken(
                BreakKind.HASH_MISMATCH, sequence,
                f"sequence {sequence} does not link to sequence {expected - 1} at offset {state.head_offset}: "
                "the chain forked or was rewritten",
            ))
        self._advance(state, sequence, digest, offset)
        return breaks

    @staticmethod
    def _advance(state: PartitionState, sequence: int, digest: bytes, offset: int) -> None:
        state.expected = sequence + 1
        state.prev_hash = digest
        state.head_offset = offset
        state.recent[sequence] = (digest, offset)
        while len(state.recent) > _RECENT:
            state.recent.popitem(last=False)


@dataclass
class VerifyReport:
    """The result of ``verify_topic``: the breaks found and each partition's state."""

    topic: str
    breaks: list[ChainBreak]
    #: Breaks found beyond those kept in ``breaks``.
    breaks_not_kept: int
    partitions: list[PartitionState]
    records: int

    @property
    def break_count(self) -> int:
        return len(self.breaks) + self.breaks_not_kept


async def verify_topic(
    bootstrap: str,
    topic: str,
    verify_key: VerifyKey,
    *,
    since_ms: int | None = None,
    on_break: Callable[[ChainBreak], None] | None = None,
    on_progress: Callable[[TopicReader], None] | None = None,
    max_kept_breaks: int = 10_000,
    kafka_options: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Read `topic` to its current end and check every partition's chain.

    Reading starts at the beginning, or at `since_ms` (then each chain is
    anchored at its first record read). `on_break` is called for each break
    as it is found, and `on_progress` after each record. `kafka_options` are
    passed to TopicReader.
    """
    verifier = ChainVerifier(verify_key, anchored=since_ms is not None)
    kept_breaks: list[ChainBreak] = []
    dropped = 0
    reader = TopicReader(
        bootstrap, [topic], since_ms=since_ms, client_id="shardbus-audit-verify", kafka_options=kafka_options,
    )
    async with reader:
        if reader.missing_topics:
            raise ConfigError(f"audit topic {topic!r} does not exist; check SHARDBUS_TOPIC_PREFIX")
        async for item in reader.records():
            for found in verifier.feed(item.partition, item.offset, item.value):
                if on_break is not None:
                    on_break(found)
                if len(kept_breaks) < max_kept_breaks:
                    kept_breaks.append(found)
                else:
                    dropped += 1
            if on_progress is not None:
                on_progress(reader)
        records = reader.records_read
    states = [verifier.partitions[number] for number in sorted(verifier.partitions)]
    return VerifyReport(topic, kept_breaks, dropped, states, records)
