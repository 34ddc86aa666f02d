"""Holder timelines and holder records in the Replayer, on hand-fed records."""

from __future__ import annotations

import io

from audit_support import T0, ListSink, RecordFeed, fixed_key, op_id
from schemas.holders import EventKind
from shardbus.audit.holder_timeline import HolderStatus, HolderTimeline
from shardbus.audit.render import TableSink
from shardbus.audit.replay import Loose, Replayer, ReplayFilter
from shardbus.audit.timeline import Status

SECRET = dict(secret_name="db/password", secret_version=1)


def make_replayer(sink, feed: RecordFeed, **options) -> Replayer:
    return Replayer(sink, audit_topic=feed.audit_topic, lifecycle_topic=feed.lifecycle_topic, **options)


def run(replayer: Replayer, records) -> None:
    for record in records:
        replayer.feed(record)
    replayer.finish()


def pooled_holder_life(feed: RecordFeed, holder: str = "h1", *, replaced: bool = True):
    """Yield the records of a pooled holder that serves one lease, fails and is replaced."""
    ids = dict(operation_id=op_id(1), app_id="billing", **SECRET)
    yield feed.audit(T0, "holder.provisioned", actor="provisioner", holder_id=holder, outcome="pooled",
                     detail="request 1 for 3 holders", **SECRET)
    yield feed.lifecycle(T0 + 1, EventKind.HOLDER_PROVISIONED, holders=(holder, "h2", "h3"), detail="pooled", **SECRET)
    yield feed.audit(T0 + 10, "request.accepted", outcome="accepted", **ids)
    yield feed.audit(T0 + 11, "fetch.sent", holder_id=holder, outcome="sent", **ids)
    yield feed.audit(T0 + 12, "fragment.received", actor="reassembler", holder_id=holder, **ids)
    yield feed.audit(T0 + 13, "lease.issued", actor="reassembler", outcome="issued", **ids)
    yield feed.lifecycle(T0 + 14, EventKind.LEASE_RELEASED, operation_id=op_id(1))
    yield feed.audit(T0 + 15, "holder.returned", actor="provisioner", holder_id=holder, outcome="returned",
                     operation_id=op_id(1), **SECRET)
    yield feed.audit(T0 + 20, "holder.failed", actor="provisioner", holder_id=holder, outcome="failed",
                     detail="holder process exited (exit status -9)", **SECRET)
    if replaced:
        yield feed.audit(T0 + 21, "holder.replaced", holder_id=holder, outcome="replaced",
                         detail="replaced by h9: fragment 1 restored from the backup store", **SECRET)
        yield feed.lifecycle(T0 + 22, EventKind.HOLDER_REPLACED, holder_id="h9", holders=(holder, "h9"), **SECRET)


def holder_timeline(sink: ListSink) -> HolderTimeline:
    [timeline] = [item for item in sink.items if isinstance(item, HolderTimeline)]
    return timeline


def test_holder_timeline_collects_every_event():
    sink, feed = ListSink(), RecordFeed()
    run(make_replayer(sink, feed, filters=ReplayFilter(holder_id="h1")), pooled_holder_life(feed))

    timeline = holder_timeline(sink)
    assert [(item.event.source, item.event.action) for item in timeline.events] == [
        ("provisioner", "holder.provisioned"), ("lifecycle", "holder.provisioned"),
        ("authorizer", "fetch.sent"), ("reassembler", "fragment.received"), ("provisioner", "holder.returned"),
        ("provisioner", "holder.failed"), ("authorizer", "holder.replaced"), ("lifecycle", "holder.replaced"),
    ]
    assert timeline.events[2].operation_id == op_id(1)
    assert timeline.status is HolderStatus.FAILED
    assert timeline.provisioned == {"pooled"}
    assert timeline.secrets == {"db/password v1"}
    assert timeline.anomalies() == []
    # The operation it served is printed too, and no loose event lines.
    assert [t.operation_id for t in sink.timelines] == [op_id(1)]
    assert [item for item in sink.items if isinstance(item, Loose)] == []


def test_holder_filter_respects_time_window():
    sink, feed = ListSink(), RecordFeed()
    filters = ReplayFilter(holder_id="h1", since_ms=T0 + 15, until_ms=T0 + 21)
    run(make_replayer(sink, feed, filters=filters), pooled_holder_life(feed))

    assert [item.event.action for item in holder_timeline(sink).events] == ["holder.returned", "holder.failed"]


def test_failed_holder_without_replacement_flagged():
    sink, feed = ListSink(), RecordFeed()
    records = list(pooled_holder_life(feed, replaced=False))
    records.append(feed.audit(T0 + 30, "holder.replace_failed", holder_id="h1", outcome="failed",
                              detail="fragment 1 has no backup copy", **SECRET))
    run(make_replayer(sink, feed, filters=ReplayFilter(holder_id="h1")), records)

    [anomaly] = holder_timeline(sink).anomalies()
    assert (anomaly.kind, anomaly.holder_id) == ("holder_not_replaced", "h1")
    assert "no backup copy" in anomaly.detail
    assert sink.items[-1].anomalies == 1


def test_late_and_unprovisioned_records_flagged():
    sink, feed = ListSink(), RecordFeed()
    records = [
        feed.audit(T0, "fetch.sent", holder_id="h5", operation_id=op_id(2), **SECRET),
        feed.audit(T0 + 1, "holder.torn_down", actor="provisioner", holder_id="h5", outcome="torn_down",
                   reason="recorded_late", detail="happened at 2023-11-14T22:13:20.000Z, recorded 40 s later: x"),
    ]
    run(make_replayer(sink, feed, filters=ReplayFilter(holder_id="h5")), records)

    timeline = holder_timeline(sink)
    assert timeline.status is HolderStatus.TORN_DOWN
    assert [a.kind for a in timeline.anomalies()] == ["no_provision_record", "recorded_late"]


def test_unverified_holder_records_flagged():
    sink, feed = ListSink(), RecordFeed()
    # RecordFeed's records carry no signature, so they fail with a key.
    records = [feed.audit(T0, "holder.provisioned", actor="provisioner", holder_id="h6", outcome="pooled")]
    run(make_replayer(sink, feed, filters=ReplayFilter(holder_id="h6"), verify_key=fixed_key().verify_key), records)

    assert [a.kind for a in holder_timeline(sink).anomalies()] == ["unverified_record"]


def test_routine_holder_records_hidden_without_filter():
    sink, feed = ListSink(), RecordFeed()
    run(make_replayer(sink, feed), pooled_holder_life(feed))

    loose = [(item.event.source, item.event.action) for item in sink.items if isinstance(item, Loose)]
    assert loose == [("provisioner", "holder.failed"), ("authorizer", "holder.replaced")]
    assert [item for item in sink.items if isinstance(item, HolderTimeline)] == []


def test_per_operation_holders_complete_operation():
    sink, feed = ListSink(), RecordFeed()
    ids = dict(operation_id=op_id(3), app_id="billing", **SECRET)
    records = [
        feed.audit(T0, "request.accepted", **ids),
        *(feed.audit(T0 + 1, "holder.provisioned", actor="provisioner", holder_id=h, outcome="per_operation",
                     operation_id=op_id(3), **SECRET) for h in ("p1", "p2")),
        feed.audit(T0 + 2, "fetch.sent", holder_id="p1", **ids),
        feed.audit(T0 + 2, "fetch.sent", holder_id="p2", **ids),
        feed.audit(T0 + 5, "lease.issued", actor="reassembler", **ids),
        feed.lifecycle(T0 + 6, EventKind.LEASE_RELEASED, operation_id=op_id(3)),
        feed.audit(T0 + 7, "holder.torn_down", actor="provisioner", holder_id="p1", outcome="torn_down",
                   operation_id=op_id(3), **SECRET),
    ]
    replayer = make_replayer(sink, feed)
    for record in records:
        replayer.feed(record)
    assert sink.timelines == []

    replayer.feed(feed.audit(T0 + 8, "holder.failed", actor="provisioner", holder_id="p2", outcome="failed",
                             operation_id=op_id(3), **SECRET))
    [timeline] = sink.timelines
    assert timeline.status is Status.COMPLETE
    assert timeline.holders_loaded == timeline.holders_done == {"p1", "p2"}
    assert timeline.anomalies() == []


def test_holder_table_output():
    sink, feed = ListSink(), RecordFeed()
    run(make_replayer(sink, feed, filters=ReplayFilter(holder_id="h1")), pooled_holder_life(feed, replaced=False))
    out = io.StringIO()

    TableSink(out).holder(holder_timeline(sink))

    lines = out.getvalue().splitlines()
    assert lines[0] == "holder h1  provisioned pooled  secrets db/password v1  [failed]"
    assert lines[1].split() == ["TIME", "(UTC)", "SOURCE", "ACTION", "OPERATION", "OUTCOME", "REASON", "DETAIL"]
    assert lines[2].split()[:5] == ["2023-11-14", "22:13:20.000", "provisioner", "holder.provisioned", "pooled"]
    assert any(op_id(1) in line and "fetch.sent" in line for line in lines)
    assert lines[-2] == "  ! holder_not_replaced: pooled holder h1 failed, and no replacement was recorded"
