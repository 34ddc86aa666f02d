"""Rebuild each operation's timeline from the audit and lifecycle topics.

``Replayer`` takes records in timestamp order (as ``TopicReader`` yields
them) and hands finished items to a sink (``shardbus.audit.render``):

- an operation's ``Timeline`` as soon as it is complete, or when it is
  evicted, or at the end;
- events that belong to no operation (a secret stored, a holder failed),
  and events that arrive after their operation was printed. Routine holder
  events without an operation (a pooled holder provisioned, a pool holder
  torn down) are left out;
- with a holder filter, that holder's own timeline (``HolderTimeline``):
  every event that names it, at the end, in place of the loose events;
- anomalies found across operations (bursts of denials, holders that sent
  corrupted fragments), and a summary at the end.

Memory stays bounded however long the topics are: at most ``max_open``
operations are open, each keeps at most ``timeline.MAX_EVENTS`` events, and
when one more would open the oldest is flushed as incomplete. Filters are
applied when a timeline is flushed, because the holders involved are only
known by then.
"""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas import codec
from schemas.audit import AuditRecord
from schemas.holders import LifecycleEvent
from shardbus.audit import actions
from shardbus.audit.chain import verify_record
from shardbus.audit.events import verify_event
from shardbus.audit.holder_timeline import HolderTimeline
from shardbus.audit.stream import TopicReader, TopicRecord
from shardbus.audit.timeline import Anomaly, Event, Status, Timeline
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import DecodeError, IntegrityError

#: Default cap on open operations.
MAX_OPEN = 10_000
# Operation ids remembered after their timeline was flushed, to mark the
# events that arrive later.
_RECENTLY_FLUSHED = 10_000
# Apps and holders tracked by the cross-operation anomaly checks.
_MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Loose:
    """An event that belongs to no open operation."""

    event: Event
    operation_id: str = ""
    app_id: str = ""
    secret_name: str = ""
    secret_version: int = 0
    #: True when its operation's timeline was already flushed.
    late: bool = False

    def to_json(self) -> dict:
        return {
            "type": "late_event" if self.late else "event", "operation_id": self.operation_id,
            "app_id": self.app_id, "secret_name": self.secret_name, "secret_version": self.secret_version,
            **self.event.to_json(),
        }


@dataclass
class Stats:
    """Counts for the summary line."""

    audit_records: int = 0
    lifecycle_events: int = 0
    undecodable: int = 0
    unverified: int = 0
    unverified_events: int = 0
    operations: collections.Counter = field(default_factory=collections.Counter)
    operations_filtered_out: int = 0
    anomalies: int = 0
    loose_events: int = 0

    def to_json(self) -> dict:
        return {
            "type": "summary", "audit_records": self.audit_records, "lifecycle_events": self.lifecycle_events,
            "undecodable": self.undecodable, "unverified": self.unverified,
            "unverified_events": self.unverified_events,
            "operations": {str(status): count for status, count in sorted(self.operations.items())},
            "operations_filtered_out": self.operations_filtered_out, "anomalies": self.anomalies,
            "loose_events": self.loose_events,
        }


class Sink(Protocol):
    def timeline(self, timeline: Timeline) -> None: ...
    def loose(self, item: Loose) -> None: ...
    def anomaly(self, anomaly: Anomaly) -> None: ...
    def holder(self, timeline: HolderTimeline) -> None: ...
    def summary(self, stats: Stats) -> None: ...


@dataclass(frozen=True)
class ReplayFilter:
    """The filters that select timelines and events for the output; None matches everything."""

    operation_id: str | None = None
    app_id: str | None = None
    #: A shell-style pattern such as "db/*".
    secret: str | None = None
    holder_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def in_window(self, at_ms: int) -> bool:
        after = self.since_ms is None or at_ms >= self.since_ms
        before = self.until_ms is None or at_ms < self.until_ms
        return after and before

    def matches(self, *, operation_id: str, app_id: str, secret_name: str, at_ms: int,
                holder: Callable[[str], bool]) -> bool:
        """Return whether an item with these ids passes every filter; `holder` tests one holder id."""
        if self.operation_id is not None and operation_id != self.operation_id:
            return False
        if self.app_id is not None and app_id != self.app_id:
            return False
        if self.secret is not None and not fnmatch.fnmatchcase(secret_name, self.secret):
            return False
        if self.holder_id is not None and not holder(self.holder_id):
            return False
        return self.in_window(at_ms)


class Replayer:
    """Turns a timestamp-ordered stream of records into timelines, loose events and anomalies."""

    def __init__(
        self,
        sink: Sink,
        *,
        audit_topic: str,
        lifecycle_topic: str | None = None,
        verify_key: VerifyKey | None = None,
        filters: ReplayFilter = ReplayFilter(),
        max_open: int = MAX_OPEN,
        burst_count: int = 5,
        burst_window_ms: int = 60_000,
    ) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        if burst_count < 2 or burst_window_ms < 1:
            raise ValueError(f"a burst needs at least 2 denials in at least 1 ms, got {burst_count} in {burst_window_ms}")
        self.sink = sink
        self.audit_topic = audit_topic
        self.lifecycle_topic = lifecycle_topic
        self.verify_key = verify_key
        self.filters = filters
        self.max_open = max_open
        self.burst_count = burst_count
        self.burst_window_ms = burst_window_ms
        self.stats = Stats()
        self._open: collections.OrderedDict[str, Timeline] = collections.OrderedDict()
        # Flushed operation ids, each with the lease ends its signed records showed.
        self._flushed: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()
        self._loaded_holders: dict[str, str] = {}
        self._denials: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._corrupting: collections.Counter = collections.Counter()
        self._holder = HolderTimeline(filters.holder_id) if filters.holder_id is not None else None

    def feed(self, item: TopicRecord) -> None:
        """Take one record of the audit or the lifecycle topic."""
        if item.topic == self.audit_topic:
            self._feed_audit(item)
        elif item.topic == self.lifecycle_topic:
            self._feed_lifecycle(item)

    def finish(self) -> None:
        """Flush the operations still open, then report the cross-operation anomalies and the summary."""
        while self._open:
            _, timeline = self._open.popitem(last=False)
            self._flush(timeline, Status.OPEN_AT_END)
        for holder, count in sorted(self._corrupting.items()):
            self._anomaly(Anomaly(
                "holder_corrupted_fragments",
                f"holder {holder} sent fragments that failed their commitment in {count} operations",
                holder_id=holder,
            ))
        if self._holder is not None:
            self.stats.anomalies += len(self._holder.anomalies())
            self.sink.holder(self._holder)
        self.sink.summary(self.stats)

    def _feed_audit(self, item: TopicRecord) -> None:
        self.stats.audit_records += 1
        try:
            record = codec.decode(item.value or b"", AuditRecord)
        except DecodeError:
            self.stats.undecodable += 1
            return
        verified = None
        if self.verify_key is not None:
            try:
                verify_record(record, item.partition, self.verify_key)
                verified = True
            except IntegrityError:
                verified = False
                self.stats.unverified += 1
        event = Event(
            record.at_ms, record.actor, record.action, record.holder_id, record.outcome, record.reason,
            record.detail, verified, f"{item.topic}:{item.partition}@{item.offset}",
        )
        if record.action == actions.REQUEST_DENIED and record.app_id:
            self._count_denial(record.app_id, record.at_ms, record.reason)
        self._note_holder(event, record.operation_id, record.secret_name, record.secret_version, ())
        self._route(event, record.operation_id, record.app_id, record.secret_name, record.secret_version, ())

    def _feed_lifecycle(self, item: TopicRecord) -> None:
        self.stats.lifecycle_events += 1
        try:
            message = codec.decode(item.value or b"", LifecycleEvent)
        except DecodeError:
            # HolderAcks written before they moved to {p}.acks, and forged
            # records, do not decode as events; the replay skips them.
            return
        verified = None
        if self.verify_key is not None:
            try:
                verify_event(message, self.verify_key)
                verified = True
            except IntegrityError:
                verified = False
                self.stats.unverified_events += 1
        event = Event(
            message.at_ms, "lifecycle", actions.lifecycle_action(message.event), message.holder_id,
            detail=message.detail, verified=verified, where=f"{item.topic}:{item.partition}@{item.offset}",
        )
        self._note_holder(event, message.operation_id, message.secret_name, message.secret_version, message.holders)
        self._route(event, message.operation_id, "", message.secret_name, message.secret_version, message.holders)

    def _route(self, event: Event, operation_id: str, app_id: str, secret_name: str, secret_version: int,
               holders: tuple[str, ...]) -> None:
        if not operation_id:
            operation_id = self._operation_of(event.holder_id, holders)
        timeline = self._open.get(operation_id) if operation_id else None
        if timeline is None:
            if not operation_id or operation_id in self._flushed:
                if event.source == "lifecycle" and event.action in self._flushed.get(operation_id, ()):
                    # The lease_released or lease_expired event that follows
                    # the audit record of the same end repeats it.
                    return
                late = bool(operation_id)
                self._loose(Loose(event, operation_id, app_id, secret_name, secret_version, late), holders)
                return
            if not self._should_track(operation_id, event.at_ms):
                return
            timeline = self._open[operation_id] = Timeline(operation_id)
            if len(self._open) > self.max_open:
                _, oldest = self._open.popitem(last=False)
                self._flush(oldest, Status.EVICTED)
        timeline.add(event, app_id=app_id, secret_name=secret_name, secret_version=secret_version, holders=holders)
        if event.action in (actions.HOLDERS_LOADED, actions.HOLDER_PROVISIONED):
            for holder in timeline.holders_loaded:
                self._loaded_holders[holder] = operation_id
        if timeline.is_complete():
            del self._open[operation_id]
            self._flush(timeline, Status.COMPLETE)

    def _note_holder(self, event: Event, operation_id: str, secret_name: str, secret_version: int,
                     holders: tuple[str, ...]) -> None:
        holder = self._holder
        if holder is None or (event.holder_id != holder.holder_id and holder.holder_id not in holders):
            return
        if self.filters.in_window(event.at_ms):
            holder.add(event, operation_id=operation_id, secret_name=secret_name, secret_version=secret_version)

    def _should_track(self, operation_id: str, at_ms: int) -> bool:
        # Only the filters known from the first event can be applied this early.
        if self.filters.operation_id is not None and operation_id != self.filters.operation_id:
            return False
        return self.filters.until_ms is None or at_ms < self.filters.until_ms

    def _operation_of(self, holder_id: str, holders: tuple[str, ...]) -> str:
        for holder in (holder_id, *holders):
            if holder and holder in self._loaded_holders:
                return self._loaded_holders[holder]
        return ""

    def _flush(self, timeline: Timeline, status: Status) -> None:
        timeline.status = status
        for holder in timeline.holders_loaded:
            if self._loaded_holders.get(holder) == timeline.operation_id:
                del self._loaded_holders[holder]
        self._flushed[timeline.operation_id] = frozenset(
            event.action for event in timeline.events
            if event.source != "lifecycle" and event.action in (actions.LEASE_RELEASED, actions.LEASE_EXPIRED)
        )
        while len(self._flushed) > _RECENTLY_FLUSHED:
            self._flushed.popitem(last=False)
        wanted = self.filters.matches(
            operation_id=timeline.operation_id, app_id=timeline.app_id, secret_name=timeline.secret_name,
            at_ms=timeline.first_ms, holder=timeline.involves_holder,
        )
        if not wanted:
            self.stats.operations_filtered_out += 1
            return
        self.stats.operations[status] += 1
        self.stats.anomalies += len(timeline.anomalies())
        for holder in timeline.corrupted_holders():
            if holder in self._corrupting or len(self._corrupting) < _MAX_TRACKED:
                self._corrupting[holder] += 1
        self.sink.timeline(timeline)

    def _loose(self, item: Loose, holders: tuple[str, ...]) -> None:
        named = {item.event.holder_id, *holders}
        if self.filters.holder_id is not None:
            # The loose events that name the holder are in its own timeline.
            return
        if item.event.action in actions.ROUTINE_HOLDER_ACTIONS or (item.event.source == "lifecycle" and not item.late):
            # Holder events outside an open operation happen to every holder,
            # such as a pooled holder returned after its operation completed,
            # so they are shown only in a holder's own timeline.
            return
        wanted = self.filters.matches(
            operation_id=item.operation_id, app_id=item.app_id, secret_name=item.secret_name,
            at_ms=item.event.at_ms, holder=lambda holder: holder in named,
        )
        if wanted:
            self.stats.loose_events += 1
            self.sink.loose(item)

    def _count_denial(self, app_id: str, at_ms: int, reason: str) -> None:
        recent = self._denials.get(app_id)
        if recent is None:
            recent = self._denials[app_id] = collections.deque()
            if len(self._denials) > _MAX_TRACKED:
                self._denials.popitem(last=False)
        recent.append(at_ms)
        while recent and recent[0] <= at_ms - self.burst_window_ms:
            recent.popleft()
        if len(recent) >= self.burst_count:
            first = recent[0]
            recent.clear()
            wanted = (self.filters.app_id in (None, app_id)) and self.filters.in_window(at_ms)
            if wanted and self.filters.operation_id is None and self.filters.holder_id is None:
                self._anomaly(Anomaly(
                    "denial_burst",
                    f"app {app_id} was denied {self.burst_count} times within "
                    f"{(at_ms - first) / 1000:g} s (window {self.burst_window_ms / 1000:g} s), last reason {reason!r}",
                    app_id=app_id, at_ms=at_ms,
                ))

    def _anomaly(self, anomaly: Anomaly) -> None:
        self.stats.anomalies += 1
        self.sink.anomaly(anomaly)


async def replay_topics(
    bootstrap: str,
    replayer: Replayer,
    *,
    since_ms: int | None = None,
    on_progress: Callable[[TopicReader], None] | None = None,
    kafka_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Read the replayer's topics to their current end and feed it; return the topics that do not exist."""
    topics = [replayer.audit_topic] + ([replayer.lifecycle_topic] if replayer.lifecycle_topic else [])
    reader = TopicReader(
        bootstrap, topics, since_ms=since_ms, client_id="shardbus-audit-replay", kafka_options=kafka_options,
    )
    async with reader:
        async for item in reader.records():
            replayer.feed(item)
            if on_progress is not None:
                on_progress(reader)
    replayer.finish()
    return reader.missing_topics
