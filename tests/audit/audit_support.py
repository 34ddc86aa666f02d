"""Helpers for the audit tests: fixed keys, hand-built chains and a fake clock."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import msgpack

from schemas import codec
from schemas.audit import AuditRecord
from schemas.holders import EventKind, LifecycleEvent
from shardbus.audit.chain import GENESIS_HASH, record_hash, sign_record
from shardbus.audit.events import sign_event
from shardbus.audit.stream import TopicRecord
from shardbus.audit.timeline import Anomaly, Timeline
from shardbus.crypto.signing import SigningKey

#: A fixed time, 2023-11-14 22:13:20 UTC, so expected timelines are exact.
T0 = 1_700_000_000_000


def fixed_key(seed: int = 1) -> SigningKey:
    """Return a deterministic Ed25519 key; only tests may make keys this way."""
    return SigningKey.from_bytes(bytes([seed]) * 32)


def op_id(n: int) -> str:
    """Return the operation id number `n`: 32 hex digits."""
    return f"{n:032x}"


def unsigned(sequence: int = 0, *, at_ms: int = T0, prev_hash: bytes = GENESIS_HASH, **fields) -> AuditRecord:
    """Return an AuditRecord with empty ids unless given, and no signature."""
    values = dict(
        at_ms=at_ms, actor="authorizer", action="fetch.sent", operation_id="", app_id="", secret_name="",
        secret_version=0, holder_id="", outcome="", reason="", detail="", sequence=sequence,
        prev_hash=prev_hash, signature=b"",
    )
    values.update(fields)
    return AuditRecord(**values)


def build_chain(key: SigningKey, partition: int, count: int, *, start_ms: int = T0, **fields) -> list[bytes]:
    """Return the encoded values of a valid chain of `count` records for `partition`."""
    values, prev = [], GENESIS_HASH
    for sequence in range(count):
        record = unsigned(sequence, at_ms=start_ms + sequence, prev_hash=prev, detail=f"record {sequence}", **fields)
        value = codec.encode(sign_record(record, partition, key))
        values.append(value)
        prev = record_hash(value)
    return values


def altered(value: bytes, **changes) -> bytes:
    """Return `value` with some fields changed and the old signature kept."""
    return codec.encode(dataclasses.replace(codec.decode(value, AuditRecord), **changes))


def reencoded(value: bytes) -> bytes:
    """Return `value` as the same map with its keys in reverse order: valid, but not canonical."""
    wire = msgpack.unpackb(value, raw=False)
    return msgpack.packb(dict(reversed(list(wire.items()))), use_bin_type=True)


@dataclass
class FakeClock:
    """A clock that moves only when `advance` is called; it returns seconds, as time.time() does."""

    now_ms: int = T0

    def __call__(self) -> float:
        return self.now_ms / 1000

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@dataclass
class ListSink:
    """A replay sink that keeps everything it gets, in order."""

    items: list = field(default_factory=list)

    def timeline(self, timeline: Timeline) -> None:
        self.items.append(timeline)

    def loose(self, item) -> None:
        self.items.append(item)

    def anomaly(self, anomaly: Anomaly) -> None:
        self.items.append(anomaly)

    def holder(self, timeline) -> None:
        self.items.append(timeline)

    def summary(self, stats) -> None:
        self.items.append(stats)

    @property
    def timelines(self) -> list[Timeline]:
        return [item for item in self.items if isinstance(item, Timeline)]

    @property
    def anomalies(self) -> list[Anomaly]:
        return [item for item in self.items if isinstance(item, Anomaly)]


class RecordFeed:
    """Builds TopicRecords of audit records and lifecycle events, with increasing offsets."""

    def __init__(self, audit_topic: str = "p.audit", lifecycle_topic: str = "p.lifecycle") -> None:
        self.audit_topic = audit_topic
        self.lifecycle_topic = lifecycle_topic
        self._offsets: dict[str, int] = {}

    def audit(self, at_ms: int, action: str, **fields) -> TopicRecord:
        record = unsigned(at_ms=at_ms, action=action, **fields)
        return self._record(self.audit_topic, at_ms, codec.encode(record))

    def lifecycle(self, at_ms: int, event: EventKind, **fields) -> TopicRecord:
        values = dict(holder_id="", operation_id="", secret_name="", secret_version=0, detail="", holders=())
        values.update(fields)
        # Replay only reads events, so any key will do for the signature they must carry.
        event_message = sign_event(LifecycleEvent(event=event, at_ms=at_ms, **values), fixed_key())
        return self._record(self.lifecycle_topic, at_ms, codec.encode(event_message))

    def raw(self, topic: str, at_ms: int, value: bytes | None) -> TopicRecord:
        return self._record(topic, at_ms, value)

    def _record(self, topic: str, at_ms: int, value: bytes | None) -> TopicRecord:
        offset = self._offsets.get(topic, 0)
        self._offsets[topic] = offset + 1
        return TopicRecord(topic, 0, offset, at_ms, None, value)
