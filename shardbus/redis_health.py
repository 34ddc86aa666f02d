"""A start-up check that Redis responds, shared by the services that keep state there."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shardbus.errors import ServiceUnavailable

#: Seconds to wait for Redis to accept the connection and reply to a PING.
DEFAULT_TIMEOUT_S = 5.0


async def check_redis(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Send Redis at `url` a PING, so a service that cannot reach it stops before it starts serving.

    Raises ServiceUnavailable, naming the host and SHARDBUS_REDIS_URL, when
    the connection fails or no reply comes within `timeout_s` seconds.
    """
    redis = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(
            f"cannot reach Redis at {without_credentials(url)} ({exc or type(exc).__name__}); "
            "check SHARDBUS_REDIS_URL and that Redis runs"
        ) from None
    finally:
        await redis.aclose()


def without_credentials(url: str) -> str:
    """Return `url` without its user, password and query, which may hold a password too."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
