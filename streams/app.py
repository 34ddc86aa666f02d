"""The faust settings both stream services share, and how they run.

Both services use faust-streaming 0.15.3 with aiokafka 0.14 on an Apache
Kafka 4.1 broker, a broker version outside what faust 0.15.3 was tested
against. A spike against the development broker showed that an app started
this way consumes, produces, runs timers, commits its offsets on a clean
stop and resumes from them. These settings
differ from faust's defaults, for the reasons given beside each one:

- ``topic_disable_leader=True``: faust would otherwise create an extra
  ``<app id>-__assignor-__leader`` topic that nothing here uses.
- ``consumer_auto_offset_reset="earliest"`` (faust's default too, set on
  purpose): a new consumer group must not skip requests sent before its
  first start.
- a short ``broker_commit_interval`` (0.5 s) and ``broker_commit_every=1000``:
  each record has side effects in Redis and on other topics, so the window
  of records that are processed twice after a crash is kept small. Handlers
  are idempotent anyway, because Kafka only promises at-least-once delivery.
  A smaller ``broker_commit_every`` costs throughput: faust 0.15.3 awaits
  the offset commit inside its fetch loop before it hands on the next
  record, so ``broker_commit_every=1`` allowed one broker round trip per
  record and capped a service at a few dozen operations per second
  (benchmarks/load.py; see docs/benchmarks.md).
- ``consumer_max_fetch_size`` and ``producer_max_request_size`` above the
  largest message of the wire contract (a sealed 1 MiB fragment), where
  faust's defaults are 1 MiB.
- ``stream_wait_empty=False``: a stop or a rebalance does not wait for the
  record an agent is handling. The agents acknowledge a record only after
  handling it (streams.agents), so an unfinished record is not committed and
  is handled again later; with the wait, a record left unacknowledged at a
  stop would hold the stop forever.
- ``web_enabled=False``: the services expose no HTTP endpoint.
- ``store="memory://"``: the services keep no faust tables, because their
  state lives in Redis (see the reassembler's module docstring).
- ``datadir`` in a fresh temporary folder, removed when the app stops or
  the process exits: faust still creates its data folder, by default
  ``<app id>-data`` in the working folder, and every test or demo run with
  its own topic prefix would otherwise leave one behind there.

The services start with ``await app.start()`` inside their own asyncio
program rather than through ``faust.Worker``, so tests run them as
in-process tasks with the same code path as ``python -m``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import faust
from redis.exceptions import ConnectionError as RedisConnectionError
from aiokafka.admin import AIOKafkaAdminClient

from schemas.base import MAX_MESSAGE_SIZE
from shardbus.errors import ConfigError, ShardbusError
from shardbus.kafka import client_options
from shardbus.readiness import mark_ready

log = logging.getLogger(__name__)

#: Partitions of the shared topics the services create. ``plans`` and
#: ``fragments`` must have the same count, so that both halves of an
#: operation reach the same reassembler instance.
DEFAULT_PARTITIONS = 4

#: Environment variable naming this instance of a service among the instances
#: of its consumer group, such as the host name; each running instance needs
#: its own. With it set, the consumer joins as a static member (Kafka's
#: group.instance.id), so an instance restarted after a crash takes its
#: partitions back at once. Without it, the group waits for the dead
#: member's session to time out (60 s, faust's default) before it rebalances.
INSTANCE_ENV = "SHARDBUS_INSTANCE_ID"

# A fetch must hold at least one record of the largest message type, plus
# room for the record headers and batch framing.
_FETCH_SIZE = MAX_MESSAGE_SIZE + 64 * 1024

#: Topic settings for topics that carry sealed fragments or leases, whose
#: records can be larger than Kafka's default limit of 1 MiB.
LARGE_RECORD_CONFIG = {"max.message.bytes": str(_FETCH_SIZE)}


def make_app(app_id: str, kafka_bootstrap: str) -> faust.App:
    """Create a faust app with the settings every shardbus stream service uses.

    With the SHARDBUS_KAFKA_TLS_* variables set, its consumer and producer
    connect with mutual TLS (faust takes the SSL context as its broker
    credentials). With SHARDBUS_INSTANCE_ID set, the consumer is a static
    member of its group (see INSTANCE_ENV).
    """
    options = client_options()
    credentials = {"broker_credentials": options["ssl_context"]} if "ssl_context" in options else {}
    instance = os.environ.get(INSTANCE_ENV, "").strip()
    membership = {"consumer_group_instance_id": f"{app_id}-{instance}"} if instance else {}
    datadir = Path(tempfile.mkdtemp(prefix="shardbus-faust-"))
    app = faust.App(
        app_id,
        datadir=datadir,
        broker=f"kafka://{kafka_bootstrap}",
        **credentials,
        **membership,
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=1000,
        broker_commit_interval=0.5,
        stream_wait_empty=False,
        consumer_max_fetch_size=_FETCH_SIZE,
        producer_max_request_size=_FETCH_SIZE,
        key_serializer="raw",
        value_serializer="raw",
    )
    weakref.finalize(app, shutil.rmtree, datadir, ignore_errors=True)
    return app


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """Return a faust topic over `names` whose keys and values are plain bytes."""
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


async def check_copartitioned(bootstrap: str, first: str, second: str) -> int:
    """Return the partition count of two topics, or raise ConfigError if they differ.

    Both halves of an operation reach one consumer only when the two topics
    have the same count, and creating topics never changes the count of a
    topic that exists already.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        described = {topic["topic"]: len(topic["partitions"]) for topic in await admin.describe_topics([first, second])}
    finally:
        await admin.close()
    if described.get(first) != described.get(second):
        raise ConfigError(
            f"topics {first} and {second} have {described.get(first)} and {described.get(second)} partitions; "
            "they must have the same count, so recreate one of them with the other's count"
        )
    return described[first]


async def run_until_stopped(
    app: faust.App,
    stopped: asyncio.Event,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start `app`, wait until `stopped` is set, then stop it.

    `on_start` runs before the app starts (the services create their topics
    there), and `on_stop` after it stopped, even when starting failed.
    """
    try:
        if on_start is not None:
            await on_start()
        # app.start() returns once the consumer has its partitions, so this
        # is the moment a supervisor may start sending records.
        await app.start()
        mark_ready()
        log.info("%s started", app.conf.id)
        await stopped.wait()
    finally:
        log.info("%s stopping", app.conf.id)
        try:
            await app.stop()
        finally:
            shutil.rmtree(app.conf.datadir, ignore_errors=True)
            if on_stop is not None:
                await on_stop()
        log.info("%s stopped", app.conf.id)


def run_main(
    serve: Callable[[asyncio.Event], Awaitable[None]], *, prog: str = "", description: str = ""
) -> None:
    """Run `serve` until SIGINT or SIGTERM, for a service's ``__main__``.

    `--help` prints `description` (the service's settings) and exits. Exits
    with status 1 when `serve` raises a ShardbusError or Redis is unreachable.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog or None, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stopped.set)
        await serve(stopped)

    try:
        asyncio.run(main())
    except ShardbusError as exc:
        # A missing key file or an unreachable broker: say so without a traceback.
        log.error("%s; the service did not start", exc)
        raise SystemExit(1) from None
    except RedisConnectionError as exc:
        log.error("cannot reach Redis (%s); check SHARDBUS_REDIS_URL and that Redis runs", exc)
        raise SystemExit(1) from None
