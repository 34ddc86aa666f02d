"""Host-side facts about microVM holders: their processes, how to end them and how many the pool keeps.

QEMU runs each holder's VM as a process named ``shardbus-<holder id>``, and
its broker relays carry ``SHARDBUS_RELAY_FOR=<holder id>`` in their
environment, so both are found from /proc without the backend that started
them: a restarted provisioner adopts VMs this way, and the demo and the
tests use it to kill a VM or to check that none is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from provisioner.microvm_qemu import RELAY_MARK

log = logging.getLogger(__name__)

#: Pause between two checks of whether a stopping process has exited.
_EXIT_POLL_S = 0.05

#: Host memory that one idle holder VM takes under TCG, QEMU included: 337 MiB
#: RSS measured with 160 MiB of guest memory (docs/benchmarks.md), rounded up
#: for the page cache that a long-running guest grows.
HOST_MIB_PER_VM = 400

#: The warm pool may take this share of the host's available memory. Each
#: stored 3-of-5 secret keeps 5 more VMs running, so the pool gets only an
#: eighth.
POOL_MEMORY_SHARE = 8
#: A default ``shardbus secret put`` (3-of-5) takes 5 holders, and a request
#: that finds the pool short waits for VMs to boot, each for about 10 s of
#: a core under TCG. A pool of 5 serves one such request at once. Each further
#: VM would cost about 5 % of a core while idle (both figures from
#: docs/benchmarks.md), only to serve a second request that comes before
#: the pool refills.
MAX_DEFAULT_POOL = 5


def default_pool_size(available_mib: int | None = None) -> int:
    """Return the default warm pool size for microVM holders.

    It is the number of VMs that fit in an eighth of the host's available
    memory (``MemAvailable``) at ``HOST_MIB_PER_VM`` each, between 1 and
    ``MAX_DEFAULT_POOL``. A host needs 16,000 MiB available for the full
    pool of 5.
    """
    if available_mib is None:
        available_mib = _available_memory_mib()
    return max(1, min(MAX_DEFAULT_POOL, available_mib // POOL_MEMORY_SHARE // HOST_MIB_PER_VM))


def _available_memory_mib() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def runs_guest(pid: int, holder_id: str) -> bool:
    """Tell whether `pid` is a live QEMU process of this user started for `holder_id`."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            arguments = file.read().split(b"\0")
    except (OSError, IndexError):
        return False
    if state == b"Z":
        return False
    expected = [b"-name", f"shardbus-{holder_id}".encode()]
    return any(arguments[i:i + 2] == expected for i in range(len(arguments)))


def find_qemu_pid(holder_id: str) -> int | None:
    """Return the pid of the QEMU process that runs `holder_id`, or None.

    It matches the ``-name shardbus-<holder id>`` argument that the backend
    gives QEMU, so the VMs of an earlier provisioner are found too. The demo
    and the tests use it to kill a VM the way a crash would.
    """
    for entry in os.listdir("/proc"):
        if entry.isdigit() and runs_guest(int(entry), holder_id):
            return int(entry)
    return None


def find_relay_pids(holder_id: str) -> list[int]:
    """Return the pids of the guestfwd relays that QEMU started for `holder_id`.

    Each relay carries ``SHARDBUS_RELAY_FOR=<holder id>`` in its environment,
    which only its own user (or root) can read.
    """
    mark = f"{RELAY_MARK}={holder_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                if mark not in file.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as file:
                # A zombie has exited and only waits for its parent to reap it.
                if file.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except (OSError, IndexError):
            continue
        found.append(int(entry))
    return found


async def end_relays(holder_id: str) -> None:
    """End the guestfwd relays QEMU left behind for `holder_id`.

    The relays exit once QEMU closes their sockets. One that is still
    connecting to the broker gets SIGTERM, then SIGKILL. The call returns
    only when none is left, so a stopped holder leaves no process behind.
    """
    loop = asyncio.get_running_loop()
    for signum in (None, signal.SIGTERM, signal.SIGKILL):
        pids = find_relay_pids(holder_id)
        if not pids:
            return
        for pid in pids if signum is not None else ():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = loop.time() + (1.0 if signum is None else 5.0)
        while find_relay_pids(holder_id) and loop.time() < deadline:
            await asyncio.sleep(_EXIT_POLL_S)
    left = find_relay_pids(holder_id)
    if left:
        log.warning("relays %s of holder %s survived SIGKILL", left, holder_id)


async def end_qemu(name: str, pid: int, alive: Callable[[], bool], timeout_s: float) -> bool:
    """Wait up to `timeout_s` for QEMU process `pid` of microVM `name` to exit, then send SIGTERM, then SIGKILL.

    `alive` returns whether that QEMU still runs. Returns True when QEMU
    exited within `timeout_s`, before any signal.
    """
    loop = asyncio.get_running_loop()
    for signum, wait_s in ((None, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if signum is not None and alive():
            expected = signum == signal.SIGTERM and timeout_s == 0.0
            log.log(logging.INFO if expected else logging.WARNING,
                    "microVM %s (qemu pid %d) still runs; sending %s",
                    name, pid, signal.Signals(signum).name)
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        # Polled, because an adopted QEMU is not our child, and a
        # Popen wait would block the event loop.
        deadline = loop.time() + wait_s
        while alive() and loop.time() < deadline:
            await asyncio.sleep(_EXIT_POLL_S)
        if not alive():
            return signum is None
    return False
