"""Fixtures shared by every test: where Kafka and Redis are, and per-test names.

Integration tests run against a real Kafka broker and Redis server. The
addresses come from SHARDBUS_KAFKA_BOOTSTRAP and SHARDBUS_REDIS_URL, which
`scripts/stack up` prints and `scripts/test` exports. Without them, and when
`docker info` succeeds, the session starts throwaway containers with
testcontainers instead. Otherwise a test that needs Kafka or Redis fails with
a message saying how to start the stack. It is never skipped, so a run that
forgot the stack cannot pass by testing nothing.

Each test gets its own topic and key prefix, so tests can share one broker
and one Redis server without seeing each other's data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from typing import AsyncIterator, Iterator

import pytest

KAFKA_BOOTSTRAP_ENV = "SHARDBUS_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "SHARDBUS_REDIS_URL"

_NO_STACK = (
    "{variable} is not set and `docker info` failed, so there is no {service} to test "
    "against. Start the local stack and export its address:\n"
    "    scripts/stack up && eval \"$(scripts/stack env)\"\n"
    "or run the tests with scripts/test, which does both."
)

# Maximum wait for a new topic to get a leader on every partition. A
# single-node broker needs well under a second, a loaded 3-node cluster more.
TOPIC_READY_TIMEOUT = 30.0


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=20, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def docker_available() -> bool:
    """Whether `docker info` succeeds, asked once per session."""
    return _docker_answers()


@pytest.fixture(scope="session")
def kafka_bootstrap(docker_available: bool) -> Iterator[str]:
    """The bootstrap servers of a real Kafka broker, "host:port[,host:port...]"."""
    configured = os.environ.get(KAFKA_BOOTSTRAP_ENV)
    if configured:
        yield configured
        return
    if not docker_available:
        pytest.fail(_NO_STACK.format(variable=KAFKA_BOOTSTRAP_ENV, service="Kafka broker"), pytrace=False)

    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.kafka import KafkaContainer
    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


@pytest.fixture(scope="session")
def redis_url(docker_available: bool) -> Iterator[str]:
    """The URL of a real Redis server, "redis://host:port/db"."""
    configured = os.environ.get(REDIS_URL_ENV)
    if configured:
        yield configured
        return
    if not docker_available:
        pytest.fail(_NO_STACK.format(variable=REDIS_URL_ENV, service="Redis server"), pytrace=False)

    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers before the community namespace
        from testcontainers.redis import RedisContainer
    with RedisContainer("redis:7") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


def _unique_prefix() -> str:
    # Topic names allow only [a-zA-Z0-9._-], and a leading letter keeps the
    # prefix valid in topic names, group ids and Redis keys alike.
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to this test, such as "t1a2b3c4d", for topic names and group ids."""
    return _unique_prefix()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test, such as "t1a2b3c4d:"; its keys are deleted afterwards."""
    prefix = _unique_prefix() + ":"
    yield prefix

    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class KafkaTopics:
    """Creates topics for one test and deletes them, and any other topic with its prefix, afterwards."""

    def __init__(self, admin, prefix: str, broker_count: int) -> None:
        self.admin = admin
        self.prefix = prefix
        #: Replication factor used when a test gives none: 1 on a single
        #: broker, 3 on the 3-node cluster.
        self.default_replication = min(3, broker_count)
        self.created: list[str] = []

    async def create(
        self,
        *names: str,
        partitions: int = 1,
        replication_factor: int | None = None,
        config: dict[str, str] | None = None,
    ) -> list[str]:
        """Create each topic and wait until every partition has a leader; return the names."""
        from aiokafka.admin import NewTopic
        from aiokafka.errors import for_code

        replicas = replication_factor or self.default_replication
        new_topics = [NewTopic(name, partitions, replicas, topic_configs=config or {}) for name in names]
        response = await self.admin.create_topics(new_topics)
        for topic, code, message in response.topic_errors:
            if code != 0:
                raise for_code(code)(f"creating topic {topic!r} failed: {message}")
            self.created.append(topic)
        await self._wait_for_leaders(list(names))
        return list(names)

    async def _wait_for_leaders(self, names: list[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOPIC_READY_TIMEOUT
        while True:
            described = await self.admin.describe_topics(names)
            waiting = [
                topic["topic"]
                for topic in described
                if topic["error_code"] != 0
                or not topic["partitions"]
                or any(partition["leader"] < 0 for partition in topic["partitions"])
            ]
            if not waiting:
                return
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"topics {waiting} have no leader on every partition "
                    f"after {TOPIC_READY_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(0.1)

    async def delete_all(self) -> None:
        """Delete the created topics and any other topic that starts with the prefix."""
        existing = await self.admin.list_topics()
        doomed = sorted({*self.created, *(t for t in existing if t.startswith(self.prefix))})
        doomed = [topic for topic in doomed if topic in existing]
        if doomed:
            await self.admin.delete_topics(doomed)


@pytest.fixture
async def kafka_admin(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[KafkaTopics]:
    """A topic helper bound to this test's `topic_prefix`; its topics are deleted afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id=f"tests-{topic_prefix}")
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        topics = KafkaTopics(admin, topic_prefix, broker_count=len(cluster["brokers"]))
        yield topics
        await topics.delete_all()
    finally:
        await admin.close()


class AuditWrites:
    """Makes the broker refuse, then accept again, every record written to an audit topic.

    Rejecting sets the topic's max.message.bytes below the size of any audit
    record, so the broker returns MESSAGE_TOO_LARGE for each write. The real
    broker rejects the record, as it would any write it cannot accept, and
    the writer fails closed at once.
    """

    #: Smaller than any record batch, which has a 61-byte header alone.
    REFUSING_LIMIT = "16"

    def __init__(self, admin) -> None:
        self.admin = admin
        self.refused: set[str] = set()

    async def refuse(self, topic: str) -> None:
        """Make the broker refuse every record written to `topic` from now on."""
        self.refused.add(topic)
        await self._set(topic, self.REFUSING_LIMIT)

    async def accept(self, topic: str) -> None:
        """Let the broker accept records on `topic` again, with the audit topic's own settings."""
        await self._set(topic, None)
        self.refused.discard(topic)

    async def _set(self, topic: str, limit: str | None) -> None:
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        from shardbus.audit.topic import TOPIC_CONFIG

        # AlterConfigs replaces every setting of the topic, so the audit
        # topic's own settings are given again with the limit.
        configs = dict(TOPIC_CONFIG)
        if limit is not None:
            configs["max.message.bytes"] = limit
        await self.admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
        # The broker applies the change shortly after its response.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOPIC_READY_TIMEOUT
        while await self._limit(topic) != limit:
            if loop.time() > deadline:
                raise TimeoutError(f"max.message.bytes of {topic} did not change within {TOPIC_READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)

    async def _limit(self, topic: str) -> str | None:
        """Return the topic's own max.message.bytes, or None when it has the broker's default."""
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})
        for response in await self.admin.describe_configs([resource]):
            for _code, _message, _type, _name, entries in response.resources:
                for name, value, _read_only, source, *_ in entries:
                    if name == "max.message.bytes":
                        # DescribeConfigs v1 and later give the source; 1 is a topic's own setting.
                        return value if source == 1 else None
        return None


@pytest.fixture
async def audit_writes(kafka_bootstrap: str) -> AsyncIterator[AuditWrites]:
    """Refuses and accepts writes to audit topics; every refused topic accepts them again afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="tests-audit-writes")
    await admin.start()
    switch = AuditWrites(admin)
    try:
        yield switch
    finally:
        for topic in sorted(switch.refused):
            await switch.accept(topic)
        await admin.close()


def _qemu_cannot_run(qemu: str = "qemu-system-x86_64") -> str | None:
    """Return why QEMU cannot boot a microVM on this machine, or None when it can."""
    if shutil.which(qemu) is None:
        return f"{qemu} is not installed"
    try:
        result = subprocess.run([qemu, "-machine", "help"], capture_output=True, text=True, timeout=60,
                                check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{qemu} does not start: {exc}"
    if result.returncode != 0:
        return f"{qemu} does not start: exit status {result.returncode}, {result.stderr.strip()[:300]}"
    if "microvm" not in result.stdout.split():
        return f"{qemu} has no microvm machine type"
    return None


@pytest.fixture(scope="session")
def microvm_host() -> None:
    """Require a host that boots microVM holders.

    The tests are skipped only where QEMU cannot run at all, and they fail
    in CI (CI=true), which must run them. When QEMU runs but the guest
    kernel, its modules or busybox are missing, the tests fail with a
    message saying to run scripts/microvm-setup.
    """
    from provisioner.microvm_image import default_cache_dir

    problem = _qemu_cannot_run()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{problem}, and CI must run the microVM tests: install QEMU with scripts/microvm-setup "
                        "(.ci/run runs it)", pytrace=False)
        pytest.skip(f"QEMU cannot run microVM holders here: {problem}")
    cache = default_cache_dir()
    needed = (cache / "kernel" / "vmlinux", cache / "kernel" / "modules" / "modules.load", cache / "busybox")
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        pytest.fail(f"QEMU runs, but the microVM guest files {', '.join(missing)} are missing; "
                    "run scripts/microvm-setup", pytrace=False)
