"""The services' audit trail after real leases and denials: the chains verify and the timelines replay."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest

from shardbus.cli.main import main
from shardbus.errors import Denied

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `shardbus audit ...` in a thread (the CLI runs its own event loop); return its status and output."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["audit", *argv])
    return status, capsys.readouterr().out


@pytest.fixture
def audit_env(shardbus_deployment, monkeypatch):
    settings = shardbus_deployment.settings
    monkeypatch.setenv("SHARDBUS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("SHARDBUS_HOME", str(settings.home))
    return shardbus_deployment


async def test_audit_trail_verifies_and_replays(audit_env, capsys):
    deployment = audit_env
    secret = secrets.token_bytes(32)
    await deployment.put("db/audited", secret, fragments=5, threshold=3)
    leased_ids = []
    async with deployment.client() as client:
        for _ in range(3):
            granted = await client.request("db/audited")
            assert bytes(granted.secret) == secret
            await client.release(granted)
            leased_ids.append(granted.operation_id)
    async with deployment.client("intruder") as intruder:
        for _ in range(2):
            with pytest.raises(Denied) as denied:
                await intruder.request("db/audited")
            assert denied.value.reason == "not_granted"

    status, output = await _cli(capsys, "verify")
    assert status == 0, output
    assert "BREAK" not in output
    assert "partition 0:" in output, "the secret store wrote no audit record"
    assert "partition 1:" in output and "partition 2:" in output

    status, output = await _cli(capsys, "replay", "--format", "jsonl")
    assert status == 0, output
    found = {item["operation_id"]: item for item in map(json.loads, output.splitlines()) if item["type"] == "operation"}
    for operation_id in leased_ids:
        timeline = found[operation_id]
        actions = [event["action"] for event in timeline["events"]]
        assert actions[0] == "request.accepted"
        assert actions.count("fetch.sent") == 5
        assert actions.count("fragment.received") >= 3
        assert "lease.issued" in actions
        # The decision and each fetch are recorded before the fragments they caused.
        assert max(i for i, a in enumerate(actions) if a == "fetch.sent") < actions.index("fragment.received")
        assert actions.index("fragment.received") < actions.index("lease.issued")
        assert timeline["reply"] == "lease.issued"
        assert all(event["verified"] is True for event in timeline["events"] if event["source"] != "lifecycle")
    denials = [timeline for timeline in found.values() if timeline["app_id"] == "intruder"]
    assert len(denials) == 2
    for timeline in denials:
        assert [event["action"] for event in timeline["events"]] == ["request.denied"]
        assert (timeline["app_id"], timeline["reply"], timeline["reason"]) == ("intruder", "request.denied", "not_granted")
