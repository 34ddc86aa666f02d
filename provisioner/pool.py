"""A warm pool of ready, empty holders.

Starting a holder process takes a second or more (the interpreter, aiokafka
and cryptography load, then the first heartbeat), too long to do while an
application waits for its secret. The pool keeps `target` holders that have
sent their first heartbeat and hold nothing, and refills itself in the
background whenever one is taken or lost.

A holder is *ready* once its first heartbeat arrives with a public key. When
the backend reports the holder's process id or public key, the heartbeat must
carry the same ones, and any other heartbeat is ignored.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from provisioner.backend import HolderBackend, HolderSpec
from provisioner.registry import HolderRegistry, HolderState
from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)

#: Pause after a refill round in which a holder failed to start, doubled up
#: to the maximum, so a broken broker does not cause a storm of processes.
REFILL_BACKOFF_S = 1.0
REFILL_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class ReadyHolder:
    """A holder that has sent its first heartbeat."""

    holder_id: str
    public_key: bytes = field(repr=False)
    kem: str


@dataclass
class _Launch:
    holder_id: str
    # Resolved by on_heartbeat when the first valid heartbeat arrives.
    heartbeat: asyncio.Future[ReadyHolder]
    # Resolved by the launch's watcher once the registry has it as ready,
    # or failed once the holder has been given up.
    settled: asyncio.Future[ReadyHolder]
    # A launch claimed by take() goes to its caller instead of the pool.
    claimed: bool = False


def new_holder_id() -> str:
    """Return a fresh random holder id, such as ``holder-3f9c0a7d12e4b856``."""
    return f"holder-{secrets.token_hex(8)}"


class WarmPool:
    """Starts holders ahead of demand and hands them out ready.

    `create_topics` creates the given holders' topics, and must finish
    before a holder starts so that nothing sent to it is lost.
    `fail_holder` is called with a holder id and a reason for each holder
    that did not become ready. It stops the holder and records the failure,
    and must accept being called twice for one holder.
    """

    def __init__(
        self,
        backend: HolderBackend,
        registry: HolderRegistry,
        spec_for: Callable[[str], HolderSpec],
        create_topics: Callable[[list[str]], Awaitable[None]],
        fail_holder: Callable[[str, str], Awaitable[None]],
        *,
        target: int = 2,
        ready_timeout_s: float = 30.0,
        make_holder_id: Callable[[], str] = new_holder_id,
    ) -> None:
        if target < 0:
            raise ValueError(f"pool target must be 0 or more, got {target}")
        self._backend = backend
        self._registry = registry
        self._spec_for = spec_for
        self._create_topics = create_topics
        self._fail_holder = fail_holder
        self.target = target
        self._ready_timeout_s = ready_timeout_s
        self._make_holder_id = make_holder_id
        self._ready: collections.deque[ReadyHolder] = collections.deque()
        self._launches: dict[str, _Launch] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._failures_in_a_row = 0
        self._changed = asyncio.Condition()
        self._refill_wanted = asyncio.Event()
        self._refill_task: asyncio.Task[None] | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def warming_count(self) -> int:
        """Holders starting for the pool, not counting those claimed by take()."""
        return sum(1 for launch in self._launches.values() if not launch.claimed)

    def ready_ids(self) -> list[str]:
        return [holder.holder_id for holder in self._ready]

    def is_starting(self, holder_id: str) -> bool:
        """Tell whether the holder was started and is not yet ready or given up."""
        return holder_id in self._launches

    def start(self) -> None:
        """Start the background refill."""
        if self._refill_task is None:
            self._refill_task = asyncio.create_task(self._refill_loop(), name="pool-refill")
            self._refill_wanted.set()

    async def close(self) -> tuple[list[str], list[str]]:
        """Stop refilling; return the ids of the ready holders and of those still starting.

        The caller keeps or tears down the ready holders, and tears down the
        starting ones, which a later provisioner could not trust.
        """
        tasks = list(self._watchers)
        if self._refill_task is not None:
            tasks.append(self._refill_task)
            self._refill_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ready = [holder.holder_id for holder in self._ready]
        starting = list(self._launches)
        for launch in self._launches.values():
            if not launch.settled.done():
                launch.settled.set_exception(ServiceUnavailable("the provisioner is shutting down"))
                launch.settled.exception()  # Mark it retrieved, so asyncio does not log it.
        self._ready.clear()
        self._launches.clear()
        return ready, starting

    async def adopt(self, holder: ReadyHolder) -> None:
        """Put a ready, empty holder that an earlier provisioner started into the pool."""
        async with self._changed:
            self._ready.append(holder)
            self._changed.notify_all()

    async def put_back(self, holders: list[ReadyHolder]) -> None:
        """Return holders that take() handed out and the caller did not use, first in line for the next take().

        A holder whose process no longer runs is left out, because its
        failure is handled elsewhere.
        """
        alive = [holder for holder in holders if self._backend.is_alive(holder.holder_id)]
        async with self._changed:
            self._ready.extendleft(reversed(alive))
            self._changed.notify_all()

    def request_refill(self) -> None:
        """Ask the background task to bring the pool back to its target."""
        self._refill_wanted.set()

    async def wait_filled(self, timeout_s: float) -> None:
        """Wait until `target` holders are ready; raise ServiceUnavailable on timeout."""

        async def filled() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._ready) >= self.target)

        try:
            await asyncio.wait_for(filled(), timeout_s)
        except asyncio.TimeoutError:
            raise ServiceUnavailable(
                f"holder pool has {len(self._ready)} of {self.target} holders ready after {timeout_s:g} s; "
                "see the holder logs"
            ) from None

    def on_heartbeat(self, holder_id: str, public_key: bytes, kem: str, pid: int) -> bool:
        """Mark a starting holder ready on its first valid heartbeat.

        Returns True when the heartbeat made a holder ready, False when the
        holder is not starting or the heartbeat's process id does not match.
        """
        launch = self._launches.get(holder_id)
        if launch is None or launch.heartbeat.done():
            return False
        status = self._backend.status(holder_id)
        if status is None:
            return False  # Not launched yet, so its next heartbeat will do.
        if status.pid and status.pid != pid:
            log.warning("ignored heartbeat for starting holder %s from pid %d, expected pid %d",
                        holder_id, pid, status.pid)
            return False
        if self._backend.reports_public_key:
            if not status.public_key:
                return False  # The backend has not read the key yet, so the next heartbeat will do.
            if not hmac.compare_digest(status.public_key, public_key):
                log.warning("ignored heartbeat for starting holder %s with a public key other than "
                            "the one the holder reported to the backend", holder_id)
                return False
        launch.heartbeat.set_result(ReadyHolder(holder_id, public_key, kem))
        return True

    def discard(self, holder_id: str, reason: str) -> bool:
        """Drop a holder that failed from the pool; return whether the pool had it.

        A holder still starting is failed through its watcher, which calls
        `fail_holder`; a ready one is only removed, and the caller fails it.
        """
        launch = self._launches.get(holder_id)
        if launch is not None:
            if not launch.heartbeat.done():
                launch.heartbeat.set_exception(ServiceUnavailable(reason))
            return True
        for holder in list(self._ready):
            if holder.holder_id == holder_id:
                self._ready.remove(holder)
                self._refill_wanted.set()
                return True
        return False

    async def take(self, count: int, timeout_s: float | None = None) -> list[ReadyHolder]:
        """Take `count` ready holders out of the pool.

        Ready holders are handed out at once. For the rest, holders already
        starting are claimed first, then new ones are started, and take()
        waits for their first heartbeat. Raises ServiceUnavailable when they
        are not all ready within `timeout_s` (by default the pool's ready
        timeout), and puts every holder that is ready back in the pool.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        taken = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
        missing = count - len(taken)
        claimed = [launch for launch in self._launches.values() if not launch.claimed][:missing]
        for launch in claimed:
            launch.claimed = True
        self._refill_wanted.set()
        try:
            if len(claimed) < missing:
                claimed += await self._launch(missing - len(claimed), claimed=True)
            if claimed:
                taken += await self._await_claimed(claimed, timeout_s or self._ready_timeout_s)
        except ServiceUnavailable:
            for launch in claimed:
                launch.claimed = False  # Whatever becomes ready later joins the pool.
            async with self._changed:
                self._ready.extendleft(reversed(taken))
                self._changed.notify_all()
            raise
        return taken

    async def _await_claimed(self, claimed: list[_Launch], timeout_s: float) -> list[ReadyHolder]:
        futures = [launch.settled for launch in claimed]
        await asyncio.wait(futures, timeout=timeout_s)
        ready = [f.result() for f in futures if f.done() and f.exception() is None]
        if len(ready) == len(claimed):
            return ready
        async with self._changed:
            self._ready.extend(ready)
            self._changed.notify_all()
        failures = [f.exception() for f in futures if f.done() and f.exception() is not None]
        first = f" (first failure: {failures[0]})" if failures else ""
        raise ServiceUnavailable(
            f"{len(claimed) - len(ready)} of {len(claimed)} new holders did not become ready "
            f"within {timeout_s:g} s{first}; see the holder logs"
        )

    async def _launch(self, count: int, *, claimed: bool) -> list[_Launch]:
        loop = asyncio.get_running_loop()
        launches = [
            _Launch(self._make_holder_id(), loop.create_future(), loop.create_future(), claimed)
            for _ in range(count)
        ]
        # Registered before the topics exist, so a concurrent take() can
        # claim them instead of starting more holders.
        for launch in launches:
            self._launches[launch.holder_id] = launch
        try:
            await self._create_topics([launch.holder_id for launch in launches])
        except ServiceUnavailable as exc:
            error = ServiceUnavailable(f"cannot create topics for new holders: {exc}")
            for launch in launches:
                self._launches.pop(launch.holder_id, None)
                launch.settled.set_exception(error)
                if not launch.claimed:
                    launch.settled.exception()  # No caller awaits it, so mark it retrieved.
            raise error from None
        for launch in launches:
            try:
                await self._registry.add(launch.holder_id)
                status = await self._backend.start(self._spec_for(launch.holder_id))
                await self._registry.set_state(launch.holder_id, HolderState.WARMING,
                                               pid=status.pid, detail=status.detail)
            except (ServiceUnavailable, RedisError, OSError) as exc:
                # An OSError, such as a log folder that cannot be written, fails
                # this holder only, so the request gets a ProvisionReply with the error.
                if not launch.heartbeat.done():
                    launch.heartbeat.set_exception(ServiceUnavailable(f"start failed: {exc}"))
            watcher = asyncio.create_task(self._watch(launch), name=f"watch-{launch.holder_id}")
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        return launches

    async def _watch(self, launch: _Launch) -> None:
        holder_id = launch.holder_id
        holder: ReadyHolder | None = None
        try:
            holder = await asyncio.wait_for(asyncio.shield(launch.heartbeat), self._ready_timeout_s)
            await self._registry.set_state(holder_id, HolderState.POOL,
                                           public_key=holder.public_key, kem=holder.kem)
        except asyncio.TimeoutError:
            reason = f"no heartbeat within {self._ready_timeout_s:g} s of its start"
            holder = None
        except (ServiceUnavailable, RedisError) as exc:
            reason = str(exc)
            holder = None
        self._launches.pop(holder_id, None)
        if holder is None:
            await self._give_up(launch, reason)
            return

        self._failures_in_a_row = 0
        log.info("holder %s is ready", holder_id)
        launch.settled.set_result(holder)
        # take() may have claimed or released this launch while the registry
        # was written, so the flag is read only now.
        if not launch.claimed:
            async with self._changed:
                self._ready.append(holder)
                self._changed.notify_all()

    async def _give_up(self, launch: _Launch, reason: str) -> None:
        self._failures_in_a_row += 1
        log.warning("holder %s did not become ready: %s", launch.holder_id, reason)
        try:
            await self._fail_holder(launch.holder_id, reason)
        except (ServiceUnavailable, RedisError) as exc:
            log.error("could not record holder %s as failed: %s", launch.holder_id, exc)
        finally:
            launch.settled.set_exception(ServiceUnavailable(f"holder {launch.holder_id}: {reason}"))
            if not launch.claimed:
                launch.settled.exception()  # No caller awaits it, so mark it retrieved.
            self._refill_wanted.set()

    async def _refill_loop(self) -> None:
        while True:
            await self._refill_wanted.wait()
            self._refill_wanted.clear()
            if self._failures_in_a_row:
                backoff = min(REFILL_BACKOFF_S * 2 ** (self._failures_in_a_row - 1), REFILL_BACKOFF_MAX_S)
                log.info("pool refill waits %g s after %d failed holder starts", backoff, self._failures_in_a_row)
                await asyncio.sleep(backoff)
            wanted = self.target - len(self._ready) - self.warming_count
            if wanted <= 0:
                continue
            try:
                await self._launch(wanted, claimed=False)
            except ServiceUnavailable as exc:
                self._failures_in_a_row += 1
                log.warning("pool refill failed: %s", exc)
                self._refill_wanted.set()
