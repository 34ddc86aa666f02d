"""Readers that look for secret bytes in everything a deployment writes while it runs.

Some of what a run writes is gone by its end: the provisioner deletes a
holder's topic and working folder when it tears the holder down, and faust's
data folders are removed when the services stop. So the readers here start
before the run and read while it goes on, and each keeps what it found for
the test to check afterwards.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas import codec
from schemas.base import MAX_MESSAGE_SIZE, Message
from shardbus.errors import DecodeError

#: Maximum wait for the scanner to reach the end of every topic, generous for a loaded 2-core machine.
CATCH_UP_TIMEOUT_S = 180.0
#: Pause between two scans of a folder, and between two checks of a condition.
POLL_S = 0.25


class TopicScanner:
    """Reads every topic of a prefix from its beginning, including topics created and deleted during the run.

    It subscribes by pattern, so a new topic is read from its first record
    once the consumer's metadata, refreshed every 250 ms, lists it. Each
    record's key, value and headers are searched for each needle. Records
    that decode are kept by topic, so a test can check which were read.
    """

    def __init__(self, bootstrap: str, prefix: str, needles: list[bytes]) -> None:
        self._pattern = re.compile(f"^{re.escape(prefix)}[.-]")
        self._needles = needles
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", metadata_max_age_ms=250,
            max_partition_fetch_bytes=2 * MAX_MESSAGE_SIZE, fetch_max_bytes=50 * 1024 * 1024,
        )
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._task: asyncio.Task[None] | None = None
        self.records = 0
        #: "topic@offset" of each record that contains a needle.
        self.findings: list[str] = []
        #: The decoded messages of each topic, in the order read.
        self.messages: dict[str, list[Message]] = defaultdict(list)

    async def __aenter__(self) -> TopicScanner:
        await self._admin.start()
        await self._consumer.start()
        self._consumer.subscribe(pattern=self._pattern.pattern)
        self._task = asyncio.create_task(self._read(), name="topic-scanner")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()
        await self._admin.close()

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for partition, records in batches.items():
                for record in records:
                    self._check(partition.topic, record)

    def _check(self, topic: str, record) -> None:  # noqa: ANN001 (aiokafka ConsumerRecord)
        self.records += 1
        fields = [record.key or b"", record.value or b""]
        fields += [value or b"" for _, value in record.headers or ()]
        for field in fields:
            if any(needle in field for needle in self._needles):
                self.findings.append(f"{topic}@{record.offset}")
        try:
            self.messages[topic].append(codec.decode(record.value or b""))
        except DecodeError:
            pass

    async def existing_topics(self) -> set[str]:
        """Return the topics of the prefix that the broker lists now."""
        return {name for name in await self._admin.list_topics() if self._pattern.match(name)}

    async def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Wait until every topic of the prefix that exists now is read to its end.

        Raises AssertionError naming the partitions still behind after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        behind: dict[str, str] = {}
        while time.monotonic() < deadline:
            behind = await self._partitions_behind()
            if not behind:
                return
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"the scanner did not read to the end of {behind} within {timeout_s:g} s")

    async def _partitions_behind(self) -> dict[str, str]:
        """Return each partition of the prefix that has records the scanner has not read, with its state."""
        # The whole topic list is described, because a request that names a
        # topic deleted meanwhile would make a broker with automatic topic
        # creation create it again.
        partitions = [
            TopicPartition(topic["topic"], partition["partition"])
            for topic in await self._admin.describe_topics()
            if self._pattern.match(topic["topic"]) and topic["error_code"] == 0
            for partition in topic["partitions"]
        ]
        try:
            ends = await asyncio.wait_for(self._consumer.end_offsets(partitions), 10)
            assigned = self._consumer.assignment()
            behind = {}
            for partition in partitions:
                end = ends[partition]
                if end == 0:
                    continue
                if partition not in assigned:
                    behind[f"{partition.topic}[{partition.partition}]"] = f"not assigned yet, end {end}"
                    continue
                position = await asyncio.wait_for(self._consumer.position(partition), 10)
                if position < end:
                    behind[f"{partition.topic}[{partition.partition}]"] = f"at {position} of {end}"
        except (KafkaError, asyncio.TimeoutError) as exc:
            # A topic deleted meanwhile fails the offset requests, and the
            # next round describes the topics again.
            return {"(offsets)": f"failed: {exc!r}"}
        return behind

    async def wait_until(self, condition: Callable[[], bool], expected: str,
                         timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Wait until `condition()` holds for the messages read so far.

        Raises AssertionError, naming the `expected` records, after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() >= deadline:
                raise AssertionError(f"{expected} was not seen on the topics within {timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    def of_type(self, topic: str, kind: type[Message]) -> list[Message]:
        """Return the messages of type `kind` read from `topic`."""
        return [message for message in self.messages.get(topic, []) if isinstance(message, kind)]


class FolderScanner:
    """Searches every file under a folder for each needle, again and again while the run goes on.

    A file is read again when its size or modification time changes. The
    names of the folders seen are kept, so a test can check that a folder
    that no longer exists was there to be read.
    """

    def __init__(self, root: Path, needles: list[bytes]) -> None:
        self._root = root
        self._needles = needles
        self._versions: dict[Path, tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.findings: list[str] = []
        self.folders_seen: set[str] = set()

    @property
    def files_read(self) -> int:
        return len(self._versions)

    async def __aenter__(self) -> FolderScanner:
        self._task = asyncio.create_task(self._loop(), name="folder-scanner")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.scan()

    async def _loop(self) -> None:
        while True:
            self.scan()
            await asyncio.sleep(POLL_S)

    def scan(self) -> None:
        """Read every file under the folder that is new or changed since the last scan."""
        # Folders and files may vanish between listing and reading, when a
        # holder is torn down or a service stops.
        for path in sorted(self._root.rglob("*")):
            try:
                if path.is_dir():
                    self.folders_seen.add(path.relative_to(self._root).parts[0])
                    continue
                status = path.stat()
                version = (status.st_size, status.st_mtime_ns)
                if self._versions.get(path) == version:
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            self._versions[path] = version
            if any(needle in data for needle in self._needles):
                self.findings.append(str(path))


def scan_files(root: Path, needles: list[bytes]) -> tuple[int, list[str]]:
    """Search every file under `root` for each needle; return how many files were read and those that matched."""
    count = 0
    findings = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        count += 1
        data = path.read_bytes()
        if any(needle in data for needle in needles):
            findings.append(str(path))
    return count, findings
