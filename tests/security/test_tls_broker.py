"""The TLS broker refuses strangers, and each principal reaches only its role's topics.

Each check that a principal cannot read a topic has a positive control: the
same client reads or writes what its role allows, so a broken connection
cannot pass for a denial.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from shardbus.certs import acls
from shardbus.certs.authority import CertificateAuthority
from shardbus.kafka import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Generous bounds for one Kafka round trip on a loaded machine; a test fails
# when one passes, it never waits for one on purpose.
TIMEOUT_S = 60.0


async def produce(options: dict[str, Any], bootstrap: str, topic: str, value: bytes = b"probe") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=20000, **options)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"k"), TIMEOUT_S)
    finally:
        await producer.stop()


async def read_first(options: dict[str, Any], bootstrap: str, topic: str) -> bytes:
    """Read the first record of partition 0 of `topic` without a consumer group.

    Raises TopicAuthorizationFailedError when the broker denies the read.
    aiokafka's consumer retries a topic it may not describe forever, so its
    client's metadata wait, which raises that error, is asked first.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=20000, **options)
    await consumer.start()
    try:
        await asyncio.wait_for(consumer._client._wait_on_metadata(topic), TIMEOUT_S)  # noqa: SLF001
        consumer.assign([TopicPartition(topic, 0)])
        record = await asyncio.wait_for(consumer.getone(), TIMEOUT_S)
        return record.value
    finally:
        await consumer.stop()


async def connects(options: dict[str, Any], bootstrap: str) -> bool:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000, **options)
    try:
        await asyncio.wait_for(producer.start(), TIMEOUT_S)
    except KafkaConnectionError:
        return False
    finally:
        await producer.stop()
    return True


async def test_client_without_certificate_refused(tls_stack):
    ca_only = create_ssl_context(cafile=str(tls_stack.folder.ca_certificate_path))

    assert not await connects({"security_protocol": "SSL", "ssl_context": ca_only}, tls_stack.bootstrap)
    assert not await connects({"security_protocol": "PLAINTEXT"}, tls_stack.bootstrap)
    assert await connects(tls_stack.admin_options(), tls_stack.bootstrap)


async def test_certificate_of_other_ca_refused(tls_stack, tmp_path):
    stranger = CertificateAuthority.generate("another deployment")
    # The stranger's certificate claims the admin's name, a super user.
    identity = stranger.issue("admin")
    (tmp_path / "admin.pem").write_bytes(identity.certificate_pem)
    (tmp_path / "admin.key").write_bytes(identity.key_pem)
    context = create_ssl_context(cafile=str(tls_stack.folder.ca_certificate_path),
                                 certfile=str(tmp_path / "admin.pem"), keyfile=str(tmp_path / "admin.key"))

    assert not await connects({"security_protocol": "SSL", "ssl_context": context}, tls_stack.bootstrap)


async def test_expired_certificate_refused(tls_stack, tls_topics):
    options = tls_stack.issue_expired(f"{tls_topics.prefix}.holder.holder-old")

    assert not await connects(options, tls_stack.bootstrap)


async def test_app_reads_only_own_replies(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.replies("billing"), topics.replies("payroll"), topics.requests],
                        kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.app_permissions(topics, "billing") + acls.app_permissions(topics, "payroll"))
    admin = tls_stack.admin_options()
    await produce(admin, tls_stack.bootstrap, topics.replies("billing"), b"for billing")
    await produce(admin, tls_stack.bootstrap, topics.replies("payroll"), b"for payroll")
    billing = tls_stack.options(f"{topics.prefix}.app.billing")

    assert await read_first(billing, tls_stack.bootstrap, topics.replies("billing")) == b"for billing"
    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(billing, tls_stack.bootstrap, topics.replies("payroll"))
    # An app writes requests but cannot read anyone's, its own included.
    await produce(billing, tls_stack.bootstrap, topics.requests)
    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(billing, tls_stack.bootstrap, topics.requests)


async def test_app_cannot_forge_replies(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.replies("payroll"), topics.plans],
                        kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.app_permissions(topics, "billing"))
    billing = tls_stack.options(f"{topics.prefix}.app.billing")

    for topic in (topics.replies("payroll"), topics.plans):
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(billing, tls_stack.bootstrap, topic)


async def test_holder_reads_only_own_topic(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.holder("h1"), topics.holder("h2"), topics.heartbeats],
                        kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.holder_permissions(topics, "h1") + acls.holder_permissions(topics, "h2"))
    admin = tls_stack.admin_options()
    await produce(admin, tls_stack.bootstrap, topics.holder("h1"), b"for h1")
    await produce(admin, tls_stack.bootstrap, topics.holder("h2"), b"for h2")
    first = tls_stack.options(f"{topics.prefix}.holder.h1")

    assert await read_first(first, tls_stack.bootstrap, topics.holder("h1")) == b"for h1"
    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(first, tls_stack.bootstrap, topics.holder("h2"))
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(first, tls_stack.bootstrap, topics.holder("h2"))
    await produce(first, tls_stack.bootstrap, topics.heartbeats)


async def test_revoked_holder_loses_access(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.holder("h1"), topics.heartbeats],
                        kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.holder_permissions(topics, "h1"))
    await produce(tls_stack.admin_options(), tls_stack.bootstrap, topics.holder("h1"), b"command")
    holder = tls_stack.options(f"{topics.prefix}.holder.h1")
    assert await read_first(holder, tls_stack.bootstrap, topics.holder("h1")) == b"command"

    with tls_stack.acl_admin() as admin:
        assert admin.revoke_principal(f"{topics.prefix}.holder.h1") == len(acls.holder_permissions(topics, "h1"))

    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(holder, tls_stack.bootstrap, topics.holder("h1"))
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(holder, tls_stack.bootstrap, topics.heartbeats)


async def test_principal_of_other_prefix_denied(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.replies("billing")], kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.app_permissions(topics, "billing"))
    await produce(tls_stack.admin_options(), tls_stack.bootstrap, topics.replies("billing"))
    # The same app id in another deployment that trusts the same CA.
    other = tls_stack.options("other-deployment.app.billing")

    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(other, tls_stack.bootstrap, topics.replies("billing"))


async def test_apps_and_holders_cannot_write_lifecycle(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.lifecycle, topics.requests, topics.acks],
                        kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.app_permissions(topics, "billing") + acls.holder_permissions(topics, "h1")
                    + acls.service_permissions(topics, "reassembler"))
    app = tls_stack.options(f"{topics.prefix}.app.billing")
    holder = tls_stack.options(f"{topics.prefix}.holder.h1")
    service = tls_stack.options(f"{topics.prefix}.reassembler")

    # A forged holders_released or lease_released would make the provisioner act.
    for options in (app, holder):
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(options, tls_stack.bootstrap, topics.lifecycle, b"forged event")
    # Positive controls: each writes what its role allows, and a service writes lifecycle.
    await produce(app, tls_stack.bootstrap, topics.requests, b"release")
    await produce(holder, tls_stack.bootstrap, topics.acks, b"ack")
    await produce(service, tls_stack.bootstrap, topics.lifecycle, b"event")
    assert await read_first(tls_stack.admin_options(), tls_stack.bootstrap, topics.lifecycle) == b"event"


async def test_holder_acks_reach_their_readers(tls_stack, tls_topics):
    topics = tls_topics
    await ensure_topics(tls_stack.bootstrap, [topics.acks], kafka_options=tls_stack.admin_options())
    tls_stack.grant(acls.holder_permissions(topics, "h1") + acls.app_permissions(topics, "billing")
                    + acls.service_permissions(topics, "authorizer") + acls.service_permissions(topics, "controller"))
    holder = tls_stack.options(f"{topics.prefix}.holder.h1")
    await produce(holder, tls_stack.bootstrap, topics.acks, b"ack of h1")

    # The holder repair (authorizer) and the CLI (controller) wait for acknowledgements.
    for role in ("authorizer", "controller"):
        reader = tls_stack.options(f"{topics.prefix}.{role}")
        assert await read_first(reader, tls_stack.bootstrap, topics.acks) == b"ack of h1"
    # An app may neither forge nor read acknowledgements.
    app = tls_stack.options(f"{topics.prefix}.app.billing")
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(app, tls_stack.bootstrap, topics.acks, b"forged ack")
    with pytest.raises(TopicAuthorizationFailedError):
        await read_first(app, tls_stack.bootstrap, topics.acks)
