"""A microVM holder on the private TLS stack: its certificate and key travel over the control port."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from provisioner.access import HolderAccess
from provisioner.backend import HolderSpec
from provisioner.microvm import MicroVMBackend
from provisioner.microvm_host import find_qemu_pid, find_relay_pids
from schemas import codec
from schemas.holders import HolderHeartbeat
from shardbus.certs import acls
from shardbus.kafka import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("microvm_host")]

HOLDER_ID = "holder-vmtls"


class UnusedAclAdmin:
    """Stands in for the ACL client: the test grants the holder's ACLs itself."""

    async def grant(self, permissions):
        raise AssertionError("no ACLs expected")

    async def revoke_principal(self, principal):
        raise AssertionError("no ACLs expected")


async def _first_heartbeat(bootstrap: str, options: dict, topic: str, timeout_s: float) -> HolderHeartbeat:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    message = codec.decode(record.value, (HolderHeartbeat,))
                    if message.holder_id == HOLDER_ID:
                        return message
        raise AssertionError(f"no heartbeat from {HOLDER_ID} over TLS within {timeout_s:g} s")
    finally:
        await consumer.stop()


async def test_vm_holder_heartbeats_over_tls(tls_stack, tls_topics, tmp_path: Path) -> None:
    admin_options = tls_stack.admin_options()
    await ensure_topics(tls_stack.bootstrap, [tls_topics.holder(HOLDER_ID), tls_topics.heartbeats],
                        kafka_options=admin_options)
    tls_stack.grant(acls.holder_permissions(tls_topics, HOLDER_ID))
    credentials = HolderAccess(tls_stack.authority, tls_topics, UnusedAclAdmin()).credentials(HOLDER_ID)
    # The console is kept past the stop so that the test can read all of it.
    backend = MicroVMBackend(tmp_path / "logs", keep_console_logs=True)

    await backend.start(HolderSpec(HOLDER_ID, tls_stack.bootstrap, tls_topics.prefix, tls=credentials))
    try:
        heartbeat = await _first_heartbeat(tls_stack.bootstrap, admin_options, tls_topics.heartbeats, 300)
        assert backend.status(HOLDER_ID).public_key == heartbeat.public_key
    finally:
        await backend.stop(HOLDER_ID, timeout_s=10)

    assert find_qemu_pid(HOLDER_ID) is None
    assert find_relay_pids(HOLDER_ID) == []
    console = (tmp_path / "logs" / f"{HOLDER_ID}.log").read_bytes()
    assert credentials.key_pem.strip().splitlines()[1] not in console, "the holder's TLS key is in its console log"
    assert b"stopped and wiped its fragments" in console
