"""Topic names and record keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from schema_strategies import messages, names

from schemas.messages import (
    MESSAGE_TYPES,
    AuditRecord,
    DeadLetter,
    FetchCommand,
    HolderHeartbeat,
    LifecycleEvent,
    OperationPlan,
    ProvisionRequest,
    StoreFragment,
)
from schemas.topics import MAX_TOPIC_LENGTH, Topics

OPERATION_ID = "0123456789abcdef0123456789abcdef"
REQUEST_ID = "fedcba9876543210fedcba9876543210"
KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def assert_valid_topic(name: str) -> None:
    assert KAFKA_TOPIC.fullmatch(name), name
    assert len(name) <= MAX_TOPIC_LENGTH
    assert name not in (".", "..")


def test_default_names():
    topics = Topics()
    assert topics.requests == "shardbus.requests"
    assert topics.plans == "shardbus.plans"
    assert topics.fragments == "shardbus.fragments"
    assert topics.lifecycle == "shardbus.lifecycle"
    assert topics.acks == "shardbus.acks"
    assert topics.heartbeats == "shardbus.heartbeats"
    assert topics.provisioner == "shardbus.provisioner"
    assert topics.provisioner_replies == "shardbus.provisioner.replies"
    assert topics.provisioned == "shardbus.authorizer.provisioned"
    assert topics.audit == "shardbus.audit"
    assert topics.deadletter == "shardbus.deadletter"
    assert topics.replies("billing") == "shardbus.replies.billing"
    assert topics.holder("h-01") == "shardbus.holder.h-01"


def test_prefix_applies_everywhere():
    topics = Topics("t1a2b3c4d")
    for name in topics.shared():
        assert name.startswith("t1a2b3c4d.")
    assert topics.replies("app") == "t1a2b3c4d.replies.app"
    assert len(set(topics.shared())) == 11


def test_longest_names_are_valid_for_kafka():
    topics = Topics("p" * 64)
    for name in topics.shared():
        assert_valid_topic(name)
    assert_valid_topic(topics.replies("a" * 64))
    assert_valid_topic(topics.holder("h" * 64))


@given(prefix=names, app_id=names, holder_id=names)
def test_generated_names_are_valid_for_kafka(prefix, app_id, holder_id):
    if prefix.startswith("__"):
        return
    topics = Topics(prefix)
    for name in topics.shared():
        assert_valid_topic(name)
    assert_valid_topic(topics.replies(app_id))
    assert_valid_topic(topics.holder(holder_id))


def test_invalid_prefix_rejected():
    for prefix in ["", "a b", "a/b", "p" * 65, "ü", "__internal", "x\n"]:
        with pytest.raises(ValueError, match="topic prefix"):
            Topics(prefix)
    with pytest.raises(TypeError, match="topic prefix"):
        Topics(7)  # type: ignore[arg-type]


def test_invalid_ids_rejected():
    topics = Topics()
    for bad in ["", "a b", "a/b", "x" * 65, "ä"]:
        with pytest.raises(ValueError, match="app_id"):
            topics.replies(bad)
        with pytest.raises(ValueError, match="holder_id"):
            topics.holder(bad)
    with pytest.raises(TypeError, match="holder_id"):
        topics.holder(None)  # type: ignore[arg-type]


# Keys


def test_operation_messages_keyed_by_operation_id():
    fetch = FetchCommand(OPERATION_ID, "h1", "db/pw", 1, 1, b"k", bytes(32), "x25519", 5)
    assert Topics.partition_key(fetch) == OPERATION_ID.encode()


def test_plans_and_fragments_share_keys():
    # Co-partitioning depends on the plan and its fragments having one key.
    from schemas.messages import FragmentResponse, HolderSlot

    plan = OperationPlan(
        OPERATION_ID, "app", "db/pw", 1, "lease", 2, [HolderSlot("h1", 1), HolderSlot("h2", 2)],
        bytes(32), "x25519", 5, 5, b"c",
    )
    response = FragmentResponse(OPERATION_ID, "h1", 1, b"f", "")
    assert Topics.partition_key(plan) == Topics.partition_key(response)


def test_holder_messages_keyed_by_holder_id():
    heartbeat = HolderHeartbeat("h1", 1, bytes(32), "x25519", 10, "ready", [])
    store = StoreFragment("h1", "db/pw", 1, 1, 1, b"f", REQUEST_ID)
    assert Topics.partition_key(heartbeat) == b"h1"
    assert Topics.partition_key(store) == b"h1"


def test_provisioning_keyed_by_request_id():
    request = ProvisionRequest(REQUEST_ID, 2, "pooled", "", "", 0, "shardbus.provisioner.replies")
    assert Topics.partition_key(request) == REQUEST_ID.encode()


def test_lifecycle_key_falls_back():
    def event(holder_id: str = "", operation_id: str = "", secret_name: str = "", version: int = 0) -> LifecycleEvent:
        return LifecycleEvent("holder_ready", 1, holder_id, operation_id, secret_name, version, "", [])

    assert Topics.partition_key(event("h1", OPERATION_ID)) == OPERATION_ID.encode()
    assert Topics.partition_key(event("h1")) == b"h1"
    assert Topics.partition_key(event(secret_name="db/pw", version=1)) == b"db/pw"
    assert Topics.partition_key(event()) == b"holder_ready"


def test_audit_key_falls_back_to_actor():
    record = AuditRecord(1, "authorizer", "holder.provisioned", "", "", "", 0, "", "ok", "", "", 0, bytes(32), b"")
    assert Topics.partition_key(record) == b"authorizer"


def test_dead_letter_keyed_by_source_partition():
    letter = DeadLetter("shardbus.requests", 3, 17, "bad", 10, bytes(32), 1)
    assert Topics.partition_key(letter) == b"shardbus.requests:3"


@given(messages())
def test_every_message_has_a_key(message):
    key = Topics.partition_key(message)
    assert isinstance(key, bytes)
    assert key


def test_every_type_has_a_key_rule():
    from schemas.topics import _KEY_FIELDS

    assert set(_KEY_FIELDS) | {DeadLetter} == set(MESSAGE_TYPES.values())


def test_key_of_non_message_rejected():
    with pytest.raises(TypeError):
        Topics.partition_key("not a message")  # type: ignore[arg-type]
