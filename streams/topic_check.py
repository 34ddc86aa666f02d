"""Ask Kafka whether a topic exists, without creating it.

The authorizer uses this before it answers a request from an app id that is
not registered: producing to a missing topic would make a broker with
``auto.create.topics.enable`` create it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient

from shardbus.kafka import client_options

log = logging.getLogger(__name__)

#: How long a "topic does not exist" answer is reused, in seconds.
NEGATIVE_CACHE_S = 5.0


class TopicCheck:
    """Cached answers to "does this topic exist?" from the broker's topic list."""

    def __init__(self, bootstrap: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._bootstrap = bootstrap
        self._clock = clock
        self._admin: AIOKafkaAdminClient | None = None
        self._known: set[str] = set()
        self._listed_at = float("-inf")

    async def exists(self, topic: str) -> bool:
        """Tell whether `topic` exists; topics once seen are assumed to stay."""
        if topic in self._known:
            return True
        if self._clock() - self._listed_at < NEGATIVE_CACHE_S:
            return False
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, **client_options())
            await self._admin.start()
        self._known = set(await self._admin.list_topics())
        self._listed_at = self._clock()
        return topic in self._known

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
