"""The process backend starting and stopping real holder processes."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from provisioner.backend import HolderSpec
from provisioner.process import ProcessBackend
from provisioner_harness import Inbox, eventually, process_exists
from schemas.holders import HolderHeartbeat
from schemas.topics import Topics
from shardbus.kafka import ensure_topics

pytestmark = pytest.mark.integration

HOLDER_ID = "holder-backend"


def _wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """Return an interpreter wrapper that records its environment and folder, and the record's path."""
    record = tmp_path / "child-environment.txt"
    wrapper = tmp_path / "python-wrapper"
    # Written to a temporary name first, so the test never reads half a file.
    wrapper.write_text(
        f'#!/bin/sh\n{{ pwd; env; }} > "{record}.part" && mv "{record}.part" "{record}"\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o700)
    return wrapper, record


async def test_holder_process_lifecycle(kafka_bootstrap: str, kafka_admin, topic_prefix: str, tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.holder(HOLDER_ID), topics.heartbeats])
    wrapper, record = _wrapper(tmp_path)
    log_dir = tmp_path / "logs"
    backend = ProcessBackend(log_dir, python=str(wrapper))

    status = await backend.start(HolderSpec(HOLDER_ID, kafka_bootstrap, topic_prefix))
    try:
        assert status.alive
        assert backend.holder_ids() == [HOLDER_ID]
        await eventually(_exists(record), "the wrapper wrote the child's environment", 30)
        lines = record.read_text().splitlines()
        workdir = Path(lines[0])
        environment = dict(line.split("=", 1) for line in lines[1:] if "=" in line)

        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert environment["SHARDBUS_KAFKA_BOOTSTRAP"] == kafka_bootstrap
        assert environment["SHARDBUS_TOPIC_PREFIX"] == topic_prefix
        assert "SHARDBUS_REDIS_URL" not in environment
        assert "SHARDBUS_HOME" not in environment
        log_path = log_dir / f"{HOLDER_ID}.log"
        assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
        await eventually(_contains(log_path, "is consuming"), "the holder logged that it is consuming", 30)

        inbox = Inbox(kafka_bootstrap, [topics.heartbeats])
        await inbox.start()
        try:
            heartbeat = await inbox.wait_for(HolderHeartbeat)
        finally:
            await inbox.stop()
        await eventually(_key_reported(backend, HOLDER_ID), "the holder reported its key on the pipe", 30)
        assert backend.status(HOLDER_ID).public_key == heartbeat.public_key
    finally:
        await backend.stop(HOLDER_ID, timeout_s=10)

    assert not process_exists(status.pid)
    assert not workdir.exists()
    assert backend.status(HOLDER_ID) is None
    assert backend.holder_ids() == []
    assert "stopped and wiped its fragments" in log_path.read_text()


async def test_exited_holder_not_alive(tmp_path: Path) -> None:
    # An invalid holder id makes the holder exit at once with a usage error.
    backend = ProcessBackend(tmp_path / "logs")
    await backend.start(HolderSpec("bad id", "127.0.0.1:1", "p"))
    try:
        await eventually(_not_alive(backend, "bad id"), "the holder exited", 30)
        status = backend.status("bad id")
        assert status is not None
        assert status.exit_code == 2
        assert "exited with code 2" in status.detail
    finally:
        await backend.stop("bad id")


async def test_stop_unknown_holder_is_noop(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path / "logs")

    await backend.stop("never-started")

    assert backend.status("never-started") is None


def _exists(path: Path):
    async def check() -> bool:
        return path.exists() and path.stat().st_size > 0
    return check


def _contains(path: Path, text: str):
    async def check() -> bool:
        return path.exists() and text in path.read_text()
    return check


def _not_alive(backend: ProcessBackend, holder_id: str):
    async def check() -> bool:
        return not backend.is_alive(holder_id)
    return check


def _key_reported(backend: ProcessBackend, holder_id: str):
    async def check() -> bool:
        status = backend.status(holder_id)
        return status is not None and len(status.public_key) == 32
    return check
