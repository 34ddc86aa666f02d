"""The stream services' small helpers, which need neither Kafka nor Redis."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest
import redis.exceptions
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from shardbus.errors import DecodeError, ServiceUnavailable
from streams.denials import readable_ids
from streams.handling import RepeatedFailureLog, is_retriable, retrying


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServiceUnavailable("down"), True),
        (KafkaConnectionError(), True),
        (redis.exceptions.ConnectionError(), True),
        (redis.exceptions.TimeoutError(), True),
        (MessageSizeTooLargeError(), False),
        (DecodeError("bad"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retriable_cases(error, expected):
    assert is_retriable(error) is expected


async def test_retrying_retries_until_success(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("refused")
        return "done"

    assert await retrying("flaky call", flaky) == "done"
    assert len(calls) == 3


async def test_retrying_raises_when_stopping():
    stop = asyncio.Event()
    stop.set()

    async def down() -> None:
        raise redis.exceptions.ConnectionError("refused")

    with pytest.raises(redis.exceptions.ConnectionError):
        await retrying("call while stopping", down, stop=stop)


async def test_retrying_raises_other_errors():
    async def broken() -> None:
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await retrying("broken call", broken)


async def _no_sleep(_seconds: float) -> None:
    return None


def test_repeated_failure_log_rate_limited(caplog):
    clock = FakeClock()
    failures = RepeatedFailureLog(logging.getLogger("test"), "the timer", interval_s=30.0, clock=clock)

    with caplog.at_level(logging.INFO, logger="test"):
        for second in range(60):
            clock.now = float(second)
            failures.failed(RuntimeError("redis down"))
        failures.succeeded()

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert "failure 1 " in messages[0]
    assert "failure 31 " in messages[1]
    assert "after 60 failures" in messages[2]


def test_readable_ids_from_invalid_request():
    payload = msgpack.packb({"operation_id": "ab" * 16, "app_id": "billing", "extra": 1})

    assert readable_ids(payload) == ("ab" * 16, "billing")


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"operation_id": "not hex", "app_id": "billing"}),
        msgpack.packb({"operation_id": "ab" * 16, "app_id": "bad app id"}),
        msgpack.packb({"operation_id": "ab" * 16}),
    ],
)
def test_readable_ids_unreadable(payload):
    assert readable_ids(payload) is None
