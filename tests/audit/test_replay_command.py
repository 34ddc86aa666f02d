"""`shardbus audit replay` on a real broker: a scripted scenario, filters, and no secret bytes out."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest

from audit_support import T0, FakeClock, op_id
from schemas import codec
from schemas.holders import EventKind, LifecycleEvent
from shardbus.audit import AuditLog
from shardbus.audit.events import sign_event
from shardbus.crypto.signing import SigningKey
from shardbus.sharing.fragmentation import Policy, split_secret

pytestmark = pytest.mark.integration

LEASED, DENIED, MISSING = op_id(0xA), op_id(0xB), op_id(0xC)


async def send_lifecycle(producer, deployment, clock: FakeClock, event: EventKind, **fields) -> None:
    """Write a lifecycle event signed with the deployment's audit key, as the services do."""
    values = dict(holder_id="", operation_id="", secret_name="", secret_version=0, detail="", holders=())
    values.update(fields)
    message = sign_event(LifecycleEvent(event=event, at_ms=clock.now_ms, **values), deployment.key)
    await producer.send_and_wait(deployment.topics.lifecycle, codec.encode(message), timestamp_ms=clock.now_ms)


async def write_scenario(deployment, producer, kafka_admin, *, lease_detail: str = "") -> FakeClock:
    """Write three operations: a lease that is released, a denial, and a fragment that never came."""
    topics = deployment.topics
    await kafka_admin.create(topics.lifecycle)
    clock = FakeClock()
    async with contextlib.AsyncExitStack() as stack:
        authorizer, reassembler = [
            await stack.enter_async_context(AuditLog(deployment.bootstrap, topics, deployment.key, role=role, clock=clock))
            for role in ("authorizer", "reassembler")
        ]
        leased = dict(operation_id=LEASED, app_id="billing", secret_name="db/password", secret_version=2)
        await authorizer.record("request.accepted", outcome="accepted", detail="pooled, threshold 2 of 3", **leased)
        clock.advance(1)
        await authorizer.record_many(
            dict(action="fetch.sent", holder_id=holder, outcome="sent", **leased) for holder in ("h1", "h2", "h3")
        )
        for holder in ("h1", "h2"):
            clock.advance(10)
            await reassembler.record("fragment.received", holder_id=holder, **leased)
        clock.advance(10)
        await reassembler.record("lease.issued", outcome="issued", detail=lease_detail, **leased)

        clock.advance(100)
        await authorizer.record(
            "request.denied", operation_id=DENIED, app_id="intruder", secret_name="db/password",
            outcome="denied", reason="not_granted",
        )

        missing = dict(operation_id=MISSING, app_id="reports", secret_name="api/token", secret_version=1)
        clock.advance(100)
        await authorizer.record("request.accepted", outcome="accepted", **missing)
        clock.advance(1)
        await send_lifecycle(producer, deployment, clock, EventKind.HOLDERS_LOADED, operation_id=MISSING,
                             secret_name="api/token", secret_version=1, holders=("p1", "p2"))
        clock.advance(1)
        await authorizer.record_many(dict(action="fetch.sent", holder_id=h, **missing) for h in ("p1", "p2"))
        clock.advance(10)
        await reassembler.record("fragment.received", holder_id="p1", **missing)
        clock.advance(5000)
        await reassembler.record("operation.failed", reason="fragment_missing", holder_id="p2",
                                 detail="holder p2 did not answer before the deadline", **missing)
        for holder in ("p1", "p2"):
            clock.advance(1)
            await send_lifecycle(producer, deployment, clock, EventKind.HOLDER_TORN_DOWN, holder_id=holder)

        clock.advance(30_000)
        await send_lifecycle(producer, deployment, clock, EventKind.LEASE_RELEASED, operation_id=LEASED)
    return clock


def json_items(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def timelines(output: str) -> list[dict]:
    return [item for item in json_items(output) if item["type"] == "operation"]


async def test_scenario_replays_into_timelines(audit_deployment, raw_producer, kafka_admin, capsys):
    await write_scenario(audit_deployment, raw_producer, kafka_admin)
    assert await audit_deployment.cli("replay", "--format", "jsonl") == 0
    found = timelines(capsys.readouterr().out)

    # Each timeline is printed when it completes: the denial first, the lease last.
    assert [t["operation_id"] for t in found] == [DENIED, MISSING, LEASED]
    denied, missing, leased = found
    assert all(t["status"] == "complete" for t in found)
    assert all(t["anomalies"] == [] for t in found)

    assert (denied["app_id"], denied["decision"], denied["reply"], denied["reason"]) == (
        "intruder", "denied", "request.denied", "not_granted",
    )
    assert [e["action"] for e in denied["events"]] == ["request.denied"]

    assert [(e["source"], e["action"], e["holder_id"]) for e in missing["events"]] == [
        ("authorizer", "request.accepted", ""),
        ("lifecycle", "holders.loaded", ""),
        ("authorizer", "fetch.sent", "p1"),
        ("authorizer", "fetch.sent", "p2"),
        ("reassembler", "fragment.received", "p1"),
        ("reassembler", "operation.failed", "p2"),
        ("lifecycle", "holder.torn_down", "p1"),
        ("lifecycle", "holder.torn_down", "p2"),
    ]
    assert (missing["reply"], missing["reason"]) == ("operation.failed", "fragment_missing")
    assert missing["holders_loaded"] == missing["holders_torn_down"] == ["p1", "p2"]

    assert [e["action"] for e in leased["events"]] == [
        "request.accepted", "fetch.sent", "fetch.sent", "fetch.sent",
        "fragment.received", "fragment.received", "lease.issued", "lease.released",
    ]
    assert (leased["secret_name"], leased["secret_version"]) == ("db/password", 2)
    assert leased["holders_asked"] == ["h1", "h2", "h3"]
    assert leased["holders_answered"] == ["h1", "h2"]
    assert leased["first_ms"] == T0
    assert all(e["verified"] is True for e in leased["events"] if e["source"] != "lifecycle")


async def test_filters_select_operations(audit_deployment, raw_producer, kafka_admin, capsys):
    await write_scenario(audit_deployment, raw_producer, kafka_admin)
    cases = [
        (["--app", "billing"], [LEASED]),
        (["--secret", "api/*"], [MISSING]),
        (["--holder", "p2"], [MISSING]),
        (["--holder", "h1"], [LEASED]),
        (["--operation", DENIED], [DENIED]),
        # Reading from --since reads only the end of the leased operation.
        (["--since", str(T0 + 50)], [DENIED, MISSING, LEASED]),
        (["--until", str(T0 + 50)], [LEASED]),
    ]
    found = {}
    for options, expected in cases:
        assert await audit_deployment.cli("replay", "--format", "jsonl", *options) == 0
        found[options[0]] = timelines(capsys.readouterr().out)
        assert [t["operation_id"] for t in found[options[0]]] == expected, options

    partial = found["--since"][-1]
    assert [e["action"] for e in partial["events"]] == ["lease.released"]
    assert [a["kind"] for a in partial["anomalies"]] == ["no_request_record", "no_final_reply"]


async def test_table_output_is_readable(audit_deployment, raw_producer, kafka_admin, capsys):
    await write_scenario(audit_deployment, raw_producer, kafka_admin)
    assert await audit_deployment.cli("replay", "--operation", MISSING) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"operation {MISSING}  app reports  secret api/token v1  [complete]"
    assert lines[1].split() == ["TIME", "(UTC)", "SOURCE", "ACTION", "HOLDER", "OUTCOME", "REASON", "DETAIL"]
    assert lines[2].split()[:4] == ["2023-11-14", "22:13:20.231", "authorizer", "request.accepted"]
    assert any("operation.failed" in line and "fragment_missing" in line for line in lines)
    assert lines[-1].startswith("replayed 13 audit records and 4 lifecycle events: operations 1 complete")


async def test_replay_output_has_no_secret_bytes(audit_deployment, raw_producer, kafka_admin, capsys):
    secret = b"correct horse battery staple 5e1d"
    fragments = split_secret(secret, Policy(3, 2), secret_id="db.password", version=2, verify_key=bytes(32))
    # The other topics of the deployment carry the secret and its fragments;
    # the replay must read neither.
    topics = audit_deployment.topics
    await kafka_admin.create(topics.fragments, topics.replies("billing"))
    for fragment in fragments.fragments:
        await raw_producer.send_and_wait(topics.fragments, fragment.to_bytes())
    await raw_producer.send_and_wait(topics.replies("billing"), secret)
    await write_scenario(
        audit_deployment, raw_producer, kafka_admin,
        lease_detail=f"lease of {len(secret)} bytes sealed to the app's reply key",
    )

    outputs = []
    for options in ([], ["--format", "jsonl"], ["--holder", "h1"]):
        assert await audit_deployment.cli("replay", *options) == 0
        outputs.append(capsys.readouterr().out)
    forbidden = [secret, *(fragment.to_bytes() for fragment in fragments.fragments)]
    for output in outputs:
        assert "lease of 33 bytes" in output
        for value in forbidden:
            for form in (value.decode("latin-1"), value.hex(), base64.b64encode(value).decode("ascii")):
                assert form not in output
    with pytest.raises(TypeError):
        async with AuditLog(audit_deployment.bootstrap, topics, audit_deployment.key, role="reassembler") as audit:
            await audit.record("lease.issued", detail=secret)


async def test_anomalies_in_replay(audit_deployment, raw_producer, kafka_admin, capsys):
    deployment = audit_deployment
    clock = FakeClock()
    async with AuditLog(deployment.bootstrap, deployment.topics, deployment.key, role="authorizer", clock=clock) as audit:
        for n in range(5):
            clock.advance(1000)
            await audit.record("request.denied", operation_id=op_id(0x100 + n), app_id="intruder",
                               secret_name="db/password", reason="bad_signature")
        await audit.record("request.accepted", operation_id=op_id(0x200), app_id="billing")
    assert await deployment.cli("replay", "--format", "jsonl", "--no-lifecycle") == 0
    items = json_items(capsys.readouterr().out)
    bursts = [item for item in items if item["type"] == "anomaly" and item["kind"] == "denial_burst"]
    assert [b["app_id"] for b in bursts] == ["intruder"]
    [open_operation] = [t for t in items if t["type"] == "operation" and t["operation_id"] == op_id(0x200)]
    assert open_operation["status"] == "incomplete: open at end"
    assert [a["kind"] for a in open_operation["anomalies"]] == ["no_final_reply"]


async def test_forged_lifecycle_event_marked_unverified(audit_deployment, raw_producer, kafka_admin, capsys):
    topics = audit_deployment.topics
    await kafka_admin.create(topics.audit, topics.lifecycle)
    released = LifecycleEvent(
        event=EventKind.HOLDERS_RELEASED, at_ms=1_700_000_000_000, holder_id="", operation_id="",
        secret_name="db/forged", secret_version=1, detail="fragments destroyed", holders=("holder-1",),
    )
    forger = SigningKey.generate()
    await raw_producer.send_and_wait(topics.lifecycle, codec.encode(sign_event(released, audit_deployment.key)))
    await raw_producer.send_and_wait(topics.lifecycle, codec.encode(sign_event(released, forger)))

    assert await audit_deployment.cli("replay", "--holder", "holder-1", "--format", "jsonl") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["lifecycle_events"] == 2
    assert summary["unverified_events"] == 1
    holder = next(line for line in lines if line["type"] == "holder")
    assert [event["verified"] for event in holder["events"]] == [True, False]
