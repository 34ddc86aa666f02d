"""Fixtures for holder tests: a running holder process and its topics."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from holder_harness import HOLDER_ID, HOLDER_TOPIC_CONFIG, HolderUnderTest, Inbox, start_holder_process
from schemas.base import MAX_MESSAGE_SIZE
from schemas.topics import Topics


@pytest.fixture
async def holder(kafka_bootstrap: str, kafka_admin, topic_prefix: str, tmp_path: Path) -> AsyncIterator[HolderUnderTest]:
    """A running holder with its topics, and an inbox of everything it sends."""
    topics = Topics(topic_prefix)
    await kafka_admin.create(topics.holder(HOLDER_ID), config=HOLDER_TOPIC_CONFIG)
    await kafka_admin.create(topics.heartbeats, topics.acks, topics.fragments, topics.deadletter)
    inbox = Inbox(kafka_bootstrap, [topics.heartbeats, topics.acks, topics.fragments, topics.deadletter])
    await inbox.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2 * MAX_MESSAGE_SIZE)
    await producer.start()
    log_path = tmp_path / "holder.log"
    process = start_holder_process(kafka_bootstrap, topic_prefix, HOLDER_ID, log_path)
    try:
        yield HolderUnderTest(process, topics, HOLDER_ID, producer, inbox, log_path)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await producer.stop()
        await inbox.stop()
