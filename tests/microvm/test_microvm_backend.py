"""The microVM backend booting, reporting, adopting and stopping one real VM holder."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from provisioner.backend import HolderSpec
from provisioner.microvm import MicroVMBackend
from provisioner.microvm_host import find_qemu_pid, find_relay_pids
from provisioner.microvm_image import default_cache_dir
from schemas import codec
from schemas.holders import HolderHeartbeat
from schemas.topics import Topics
from shardbus.errors import ServiceUnavailable
from shardbus.kafka import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOLDER_ID = "holder-vmbackend"

if shutil.which("qemu-system-x86_64") is None or not (default_cache_dir() / "kernel" / "vmlinux").exists():
    pytest.skip("QEMU cannot run microVM holders here: run scripts/microvm-setup", allow_module_level=True)


async def _first_heartbeat(bootstrap: str, topic: str, timeout_s: float) -> HolderHeartbeat:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    heartbeat = codec.decode(record.value, (HolderHeartbeat,))
                    if heartbeat.holder_id == HOLDER_ID:
                        return heartbeat
        raise AssertionError(f"no heartbeat from {HOLDER_ID} within {timeout_s:g} s")
    finally:
        await consumer.stop()


async def test_vm_reported_adopted_and_stopped(kafka_bootstrap: str, kafka_admin, topic_prefix: str,
                                               tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.holder(HOLDER_ID), topics.heartbeats])
    log_dir = tmp_path / "logs"
    first = MicroVMBackend(log_dir)
    second = MicroVMBackend(log_dir)
    try:
        status = await first.start(HolderSpec(HOLDER_ID, kafka_bootstrap, topic_prefix))
        assert status.alive
        assert status.pid == 0, "the host cannot check a guest pid, so the status must report none"
        qemu_pid = first.qemu_pid(HOLDER_ID)
        assert find_qemu_pid(HOLDER_ID) == qemu_pid

        heartbeat = await _first_heartbeat(kafka_bootstrap, topics.heartbeats, 300)
        assert first.status(HOLDER_ID).public_key == heartbeat.public_key
        assert find_relay_pids(HOLDER_ID) != [], "the holder reaches Kafka through no relay"

        # A provisioner that dies leaves its VM running; the next one adopts it.
        adopted = second.adopt(HOLDER_ID, 0, heartbeat.public_key, heartbeat.kem)
        assert adopted is not None
        assert adopted.alive
        assert adopted.public_key == heartbeat.public_key
        assert "adopted" in adopted.detail
        assert second.qemu_pid(HOLDER_ID) == qemu_pid
        assert second.adopt("holder-never-started", 0, b"k", "x25519") is None

        await second.stop(HOLDER_ID, timeout_s=10)
        assert second.status(HOLDER_ID) is None
        assert find_qemu_pid(HOLDER_ID) is None
        assert find_relay_pids(HOLDER_ID) == []
        # An exiting process loses its command line before it becomes a
        # zombie that the first backend's Popen can reap, so this may lag.
        deadline = time.monotonic() + 30
        while first.status(HOLDER_ID).alive and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert first.status(HOLDER_ID).alive is False
    finally:
        await first.close(timeout_s=10)
        await second.close(timeout_s=10)
    assert find_qemu_pid(HOLDER_ID) is None


async def test_failed_launch_frees_boot_slot(tmp_path: Path) -> None:
    backend = MicroVMBackend(tmp_path / "logs", accelerator="tcg", max_booting=1)
    # A prefix this long makes the kernel command line exceed its limit.
    spec = HolderSpec("holder-toolong", "127.0.0.1:9", "p" * 3000)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable, match="kernel command line has"):
            await asyncio.wait_for(backend.start(spec), 60)
    assert backend.holder_ids() == []
    assert find_qemu_pid("holder-toolong") is None
