"""Host-side facts about microVM holders: their processes and how many the pool keeps.

QEMU runs each holder's VM as a process named ``shardbus-<holder id>``, and
its broker relays carry ``SHARDBUS_RELAY_FOR=<holder id>`` in their
environment, so both are found from /proc without the backend that started
them: a restarted provisioner adopts VMs this way, and the demo and the
tests use it to kill a VM or to check that none is left.
"""

from __future__ import annotations

import os

from provisioner.microvm_qemu import RELAY_MARK

#: Host memory that one idle holder VM takes under TCG, QEMU included: 337 MiB
#: RSS measured with 160 MiB of guest memory (docs/benchmarks.md), rounded up
#: for the page cache that a long-running guest grows.
HOST_MIB_PER_VM = 400

#: The warm pool may take this share of the host's available memory.
POOL_MEMORY_SHARE = 8
#: Booting a guest under TCG keeps a core busy for several seconds, so the
#: default pool stays small even on a large host.
MAX_DEFAULT_POOL = 4


def default_pool_size(available_mib: int | None = None) -> int:
    """Return the default warm pool size for microVM holders.

    It is the number of VMs that fit in an eighth of the host's available
    memory (``MemAvailable``) at ``HOST_MIB_PER_VM`` each, between 1 and
    ``MAX_DEFAULT_POOL``.
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
