"""The input record type and the retry loop that the stream handlers share.

Handlers are idempotent, so a record that fails on a retriable error
(Redis or Kafka unreachable) is processed again from the start. Its offset
is not committed until the handler returns, so a crash in between also
ends in a second run rather than a lost record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis.exceptions
from aiokafka.errors import KafkaError

from shardbus.errors import ShardbusError

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRIABLE_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 5.0


@dataclass(frozen=True)
class InputRecord:
    """One consumed Kafka record, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes = field(repr=False)


def is_retriable(exc: BaseException) -> bool:
    """Tell whether the call that raised `exc` may succeed once Kafka or Redis is back."""
    if isinstance(exc, (ShardbusError, KafkaError)):
        return bool(exc.retriable)
    return isinstance(exc, (*_RETRIABLE_REDIS_ERRORS, ConnectionError, asyncio.TimeoutError))


async def retrying(description: str, call: Callable[[], Awaitable[T]], *, stop: asyncio.Event | None = None) -> T:
    """Await `call()` until it returns, retrying retriable errors with backoff.

    `description` names the work in log lines. Other errors propagate. When `stop`
    is set the last retriable error propagates instead of another retry, so
    a stopping service does not hang on an unreachable Redis.
    """
    delay = _FIRST_DELAY_S
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_retriable(exc) or (stop is not None and stop.is_set()):
                raise
            log.warning("%s failed (%s: %s); retrying in %.1f s", description, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)


class RepeatedFailureLog:
    """A log for a failure that may repeat on every timer tick.

    The first failure is logged with its traceback, later ones at most once
    per `interval_s` with the count so far, and the first success after a
    failure is logged too.
    """

    def __init__(
        self, logger: logging.Logger, description: str, *, interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._description = description
        self._interval_s = interval_s
        self._clock = clock
        self._failures = 0
        self._logged_at = float("-inf")

    def failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._clock() - self._logged_at < self._interval_s:
            return
        self._logged_at = self._clock()
        self._logger.error(
            "%s failed (failure %d since the last success): %s: %s",
            self._description, self._failures, type(exc).__name__, exc, exc_info=self._failures == 1,
        )

    def succeeded(self) -> None:
        if self._failures:
            self._logger.info("%s succeeded again after %d failures", self._description, self._failures)
        self._failures = 0
        self._logged_at = float("-inf")
