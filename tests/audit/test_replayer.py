"""The Replayer on hand-fed records: completion, anomalies, filters and the memory cap."""

from __future__ import annotations

from audit_support import T0, ListSink, RecordFeed, op_id
from schemas.holders import EventKind
from shardbus.audit.replay import Loose, Replayer, ReplayFilter, Stats
from shardbus.audit.timeline import MAX_EVENTS, Status


def make_replayer(sink: ListSink, feed: RecordFeed, **options) -> Replayer:
    return Replayer(sink, audit_topic=feed.audit_topic, lifecycle_topic=feed.lifecycle_topic, **options)


def accepted_with_lease(feed: RecordFeed, n: int, at: int, *, app: str = "billing", secret: str = "db/password"):
    """Yield the records of one accepted operation whose lease is released."""
    ids = dict(operation_id=op_id(n), app_id=app, secret_name=secret, secret_version=1)
    yield feed.audit(at, "request.accepted", outcome="accepted", **ids)
    for i, holder in enumerate(("h1", "h2")):
        yield feed.audit(at + 1 + i, "fetch.sent", holder_id=holder, outcome="sent", **ids)
    for i, holder in enumerate(("h1", "h2")):
        yield feed.audit(at + 10 + i, "fragment.received", actor="reassembler", holder_id=holder, **ids)
    yield feed.audit(at + 20, "lease.issued", actor="reassembler", outcome="issued", **ids)
    yield feed.lifecycle(at + 30, EventKind.LEASE_RELEASED, operation_id=op_id(n))


def run(replayer: Replayer, records) -> None:
    for record in records:
        replayer.feed(record)
    replayer.finish()


def test_complete_operation_flushes_at_last_event():
    sink, feed = ListSink(), RecordFeed()
    replayer = make_replayer(sink, feed)
    records = list(accepted_with_lease(feed, 1, T0))
    for record in records[:-1]:
        replayer.feed(record)
    assert sink.timelines == []
    replayer.feed(records[-1])
    [timeline] = sink.timelines
    assert timeline.status is Status.COMPLETE
    assert [e.action for e in timeline.events] == [
        "request.accepted", "fetch.sent", "fetch.sent", "fragment.received", "fragment.received",
        "lease.issued", "lease.released",
    ]
    assert timeline.anomalies() == []


def test_denied_request_is_complete_at_once():
    sink, feed = ListSink(), RecordFeed()
    replayer = make_replayer(sink, feed)
    replayer.feed(feed.audit(T0, "request.denied", operation_id=op_id(2), app_id="x", reason="not_granted"))
    [timeline] = sink.timelines
    assert timeline.decision == "denied"
    assert timeline.reply_reason == "not_granted"


def test_open_operation_ends_incomplete():
    sink, feed = ListSink(), RecordFeed()
    run(make_replayer(sink, feed), list(accepted_with_lease(feed, 3, T0))[:-2])
    [timeline] = sink.timelines
    assert timeline.status is Status.OPEN_AT_END
    assert [a.kind for a in timeline.anomalies()] == ["no_final_reply"]


def test_lease_without_end_and_expiry_are_flagged():
    sink, feed = ListSink(), RecordFeed()
    records = list(accepted_with_lease(feed, 4, T0))[:-1]
    expired = list(accepted_with_lease(feed, 5, T0 + 100))[:-1]
    expired.append(feed.lifecycle(T0 + 200, EventKind.LEASE_EXPIRED, operation_id=op_id(5)))
    run(make_replayer(sink, feed), records + expired)
    by_id = {t.operation_id: t for t in sink.timelines}
    assert [a.kind for a in by_id[op_id(4)].anomalies()] == ["lease_not_ended"]
    assert by_id[op_id(5)].status is Status.COMPLETE
    assert [a.kind for a in by_id[op_id(5)].anomalies()] == ["lease_expired"]


def test_unasked_and_corrupted_fragments_are_flagged():
    sink, feed = ListSink(), RecordFeed()
    ids = dict(operation_id=op_id(6), app_id="billing", secret_name="db/password", secret_version=1)
    records = [
        feed.audit(T0, "request.accepted", **ids),
        feed.audit(T0 + 1, "fetch.sent", holder_id="h1", **ids),
        feed.audit(T0 + 2, "fetch.sent", holder_id="h2", **ids),
        feed.audit(T0 + 2, "fetch.sent", holder_id="h3", **ids),
        feed.audit(T0 + 3, "fragment.received", actor="reassembler", holder_id="h9", **ids),
        feed.audit(T0 + 4, "fragment.rejected", actor="reassembler", holder_id="h2", reason="fragment_corrupted", **ids),
        # A rejection without a reason code, as the reassembler writes for a fragment that failed to open.
        feed.audit(T0 + 4, "fragment.rejected", actor="reassembler", holder_id="h3", detail="tag mismatch", **ids),
        feed.audit(T0 + 5, "operation.failed", actor="reassembler", reason="fragment_corrupted", **ids),
    ]
    run(make_replayer(sink, feed), records)
    [timeline] = sink.timelines
    found = {(a.kind, a.holder_id) for a in timeline.anomalies()}
    assert found == {
        ("fragment_from_unasked_holder", "h9"), ("fragment_corrupted", "h2"), ("fragment_corrupted", "h3"),
    }
    assert timeline.holders_rejected == {"h2": "fragment_corrupted", "h3": "tag mismatch"}
    summaries = [a for a in sink.anomalies if a.kind == "holder_corrupted_fragments"]
    assert [a.holder_id for a in summaries] == ["h2", "h3"]


def test_denial_burst_is_flagged_once():
    sink, feed = ListSink(), RecordFeed()
    records = [
        feed.audit(T0 + i * 1000, "request.denied", operation_id=op_id(100 + i), app_id="intruder",
                   reason="bad_signature")
        for i in range(6)
    ]
    run(make_replayer(sink, feed, burst_count=5, burst_window_ms=10_000), records)
    bursts = [a for a in sink.anomalies if a.kind == "denial_burst"]
    assert len(bursts) == 1
    assert bursts[0].app_id == "intruder"
    assert bursts[0].at_ms == T0 + 4000


def test_denials_outside_window_are_no_burst():
    sink, feed = ListSink(), RecordFeed()
    records = [
        feed.audit(T0 + i * 20_000, "request.denied", operation_id=op_id(200 + i), app_id="slow", reason="stale_request")
        for i in range(6)
    ]
    run(make_replayer(sink, feed, burst_count=5, burst_window_ms=60_000), records)
    assert [a for a in sink.anomalies if a.kind == "denial_burst"] == []


def test_per_operation_holders_must_be_torn_down():
    sink, feed = ListSink(), RecordFeed()
    ids = dict(operation_id=op_id(7), app_id="billing", secret_name="db/password", secret_version=1)
    records = [
        feed.audit(T0, "request.accepted", **ids),
        feed.lifecycle(T0 + 1, EventKind.HOLDERS_LOADED, operation_id=op_id(7), holders=("p1", "p2")),
        feed.audit(T0 + 2, "fetch.sent", holder_id="p1", **ids),
        feed.audit(T0 + 3, "fetch.sent", holder_id="p2", **ids),
        feed.audit(T0 + 5, "operation.failed", actor="reassembler", reason="fragment_missing", **ids),
        # The provisioner names only the holder, so the replay links it through the loaded holders.
        feed.lifecycle(T0 + 6, EventKind.HOLDER_TORN_DOWN, holder_id="p1"),
    ]
    replayer = make_replayer(sink, feed)
    for record in records:
        replayer.feed(record)
    assert sink.timelines == []
    replayer.feed(feed.lifecycle(T0 + 7, EventKind.HOLDER_TORN_DOWN, holder_id="p2"))
    [timeline] = sink.timelines
    assert timeline.status is Status.COMPLETE
    assert timeline.holders_done == {"p1", "p2"}


def test_cap_evicts_oldest_open_operation():
    sink, feed = ListSink(), RecordFeed()
    replayer = make_replayer(sink, feed, max_open=2)
    for n in range(3):
        replayer.feed(feed.audit(T0 + n, "request.accepted", operation_id=op_id(300 + n), app_id="a"))
    [evicted] = sink.timelines
    assert evicted.operation_id == op_id(300)
    assert evicted.status is Status.EVICTED
    replayer.feed(feed.audit(T0 + 10, "lease.issued", operation_id=op_id(300), app_id="a"))
    late = [item for item in sink.items if isinstance(item, Loose)]
    assert [(item.operation_id, item.late) for item in late] == [(op_id(300), True)]


def test_events_per_timeline_are_capped():
    sink, feed = ListSink(), RecordFeed()
    ids = dict(operation_id=op_id(8), app_id="a")
    records = [feed.audit(T0 + i, "fetch.sent", holder_id=f"h{i}", **ids) for i in range(MAX_EVENTS + 3)]
    run(make_replayer(sink, feed), records)
    [timeline] = sink.timelines
    assert len(timeline.events) == MAX_EVENTS
    assert timeline.events_not_kept == 3


def test_filters_select_timelines():
    feed = RecordFeed()
    records = list(accepted_with_lease(feed, 9, T0, app="billing", secret="db/password"))
    records += list(accepted_with_lease(feed, 10, T0 + 1000, app="reports", secret="api/token"))
    cases = [
        (ReplayFilter(app_id="reports"), [op_id(10)]),
        (ReplayFilter(secret="db/*"), [op_id(9)]),
        (ReplayFilter(operation_id=op_id(10)), [op_id(10)]),
        (ReplayFilter(holder_id="h2"), [op_id(9), op_id(10)]),
        (ReplayFilter(holder_id="h7"), []),
        (ReplayFilter(since_ms=T0 + 500), [op_id(10)]),
        (ReplayFilter(until_ms=T0 + 500), [op_id(9)]),
    ]
    for filters, expected in cases:
        sink = ListSink()
        run(make_replayer(sink, feed, filters=filters), records)
        assert [t.operation_id for t in sink.timelines] == expected, filters


def test_undecodable_audit_records_are_counted():
    sink, feed = ListSink(), RecordFeed()
    run(make_replayer(sink, feed), [feed.raw(feed.audit_topic, T0, b"junk")])
    stats = sink.items[-1]
    assert isinstance(stats, Stats)
    assert stats.undecodable == 1


def test_lease_end_event_after_its_record_not_late():
    sink, feed = ListSink(), RecordFeed()
    records = list(accepted_with_lease(feed, 8, T0))[:-1]
    ids = dict(operation_id=op_id(8), app_id="billing", secret_name="db/password", secret_version=1)
    records.append(feed.audit(T0 + 30, "lease.released", outcome="released", **ids))
    records.append(feed.lifecycle(T0 + 31, EventKind.LEASE_RELEASED, operation_id=op_id(8)))
    # A lifecycle event that no record of the operation backs is still shown late.
    records.append(feed.lifecycle(T0 + 32, EventKind.LEASE_EXPIRED, operation_id=op_id(8)))
    run(make_replayer(sink, feed), records)

    [timeline] = sink.timelines
    assert timeline.status is Status.COMPLETE
    assert [e.action for e in timeline.events][-1] == "lease.released"
    loose = [item for item in sink.items if isinstance(item, Loose)]
    assert [(item.event.action, item.late) for item in loose] == [("lease.expired", True)]
