"""Process hardening a holder applies to itself before it makes its key pair.

A holder keeps an HPKE private key and, for a moment per fetch, a plaintext
fragment in memory. These steps keep that memory out of reach of other
processes and off the disk:

- no core dumps (RLIMIT_CORE 0), so a crash writes no memory image;
- not dumpable (``PR_SET_DUMPABLE`` 0), so a process of the same user without
  CAP_SYS_PTRACE can neither ptrace the holder nor read ``/proc/PID/mem`` or
  ``/proc/PID/environ``;
- no new privileges (``PR_SET_NO_NEW_PRIVS``), so nothing it executes gains any;
- every capability dropped except CAP_IPC_LOCK, so a holder running as root
  cannot ptrace or signal more privileged services such as the authorizer;
- memory locked (``mlockall``) where permitted, so key pages are not swapped out;
- resource limits a holder lives well within (see ResourceLimits): open
  files, data size (which also bounds the memory that ``mlockall`` pins), and
  file size;
- a parent-death signal, only when started with ``--parent-pid``. The
  process backend does not ask for one, so that pooled holders outlive a
  provisioner crash and the restarted provisioner adopts them.

Each step is independent: one that the kernel or the container refuses is
logged at INFO and the others still apply. Linux only; on another system the
prctl and capability steps are skipped.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import signal
import sys
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Constants from <linux/prctl.h> and <linux/capability.h>.
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAP_SETPCAP = 8
CAP_IPC_LOCK = 14
_CAPABILITY_VERSION_3 = 0x20080522
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4

#: Soft and hard RLIMIT_NOFILE of a holder: a few Kafka connections, its log
#: and the interpreter's own files fit many times over.
HOLDER_OPEN_FILES = 256

#: Soft and hard RLIMIT_DATA of a holder, in bytes. An idle holder uses
#: about 21 MiB of data (VmData). After storing and fetching six fragments of
#: 1 MiB each, about the largest a StoreFragment carries, it used about
#: 40 MiB. Measured with CPython 3.11.7, aiokafka 0.14 and pyca/cryptography
#: 48 on x86-64 Linux 6.18. The limit leaves room for about a hundred such
#: fragments while still bounding the memory a holder can lock.
HOLDER_DATA_BYTES = 256 * 1024 * 1024

#: Soft and hard RLIMIT_FSIZE of a holder, in bytes. A holder writes no file
#: itself, but the process backend points its stdout and stderr at a log
#: file, and the limit applies to that file too.
HOLDER_FILE_BYTES = 64 * 1024 * 1024

# With MCL_FUTURE every new thread's stack is locked in full, so holder
# threads (asyncio's resolver pool) get small stacks instead of 8 MiB each.
_THREAD_STACK_BYTES = 512 * 1024


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ResourceLimits:
    """The resource limits a holder sets on itself, soft and hard alike.

    ``data_bytes`` becomes RLIMIT_DATA rather than RLIMIT_AS. Since Linux 4.7
    RLIMIT_DATA counts the private writable mappings, which is the memory a
    holder fills. RLIMIT_AS would also count address space that glibc
    reserves without using it, 64 MiB for the malloc arena of each thread.

    The memory that ``mlockall`` pins is the private writable memory, which
    ``data_bytes`` bounds, plus the pages of the interpreter and its
    libraries. So the limit also bounds what a holder with CAP_IPC_LOCK can
    lock. RLIMIT_MEMLOCK is left as it is. The holder locks memory only with
    CAP_IPC_LOCK, which makes the kernel ignore RLIMIT_MEMLOCK, or with an
    unlimited RLIMIT_MEMLOCK. A finite RLIMIT_MEMLOCK set after
    ``mlockall(MCL_FUTURE)`` would make every later mapping fail once the
    locked total reached it, and a new thread's arena alone reserves 64 MiB.

    ``file_bytes`` becomes RLIMIT_FSIZE. The holder ignores SIGXFSZ, so a
    write past the limit fails with EFBIG. A full log file then loses log
    lines but does not stop the holder.

    RLIMIT_NPROC is not set. It counts every process and thread of the real
    user, and holders run as the same user as the services, so no value
    would bound the holder alone. The kernel also ignores it for root. A
    holder starts no other program and only a few threads.
    """

    open_files: int = HOLDER_OPEN_FILES
    data_bytes: int = HOLDER_DATA_BYTES
    file_bytes: int = HOLDER_FILE_BYTES

    def __post_init__(self) -> None:
        for name in ("open_files", "data_bytes", "file_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ResourceLimits.{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"ResourceLimits.{name} must be positive, got {value}")


@dataclass
class HardeningReport:
    """The hardening steps that took effect, and the reasons the others did not."""

    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int = 0) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def disable_core_dumps() -> None:
    """Set RLIMIT_CORE to 0, soft and hard, so no crash writes a memory image."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _lower_limit(kind: int, limit: int) -> None:
    """Set the soft and hard limit of `kind` to `limit`, or to the current hard limit if that is lower.

    Only a process with CAP_SYS_RESOURCE may raise a hard limit, and the holder
    drops that capability, so the limit stays for the holder's lifetime.
    """
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(kind, (limit, limit))


def limit_open_files(limit: int = HOLDER_OPEN_FILES) -> None:
    """Lower RLIMIT_NOFILE to `limit`, or to the current hard limit if that is lower."""
    _lower_limit(resource.RLIMIT_NOFILE, limit)


def limit_data(limit: int = HOLDER_DATA_BYTES) -> None:
    """Lower RLIMIT_DATA to `limit` bytes, or to the current hard limit if that is lower.

    Raises ValueError, leaving the limit as it was, when the process already
    uses more than `limit`, because every later allocation would then fail.
    """
    used = _data_bytes()
    if used is not None and used >= limit:
        raise ValueError(f"the data limit of {limit} bytes is below the {used} bytes the holder uses already; "
                         "give a larger limit")
    _lower_limit(resource.RLIMIT_DATA, limit)


def limit_file_size(limit: int = HOLDER_FILE_BYTES) -> None:
    """Lower RLIMIT_FSIZE to `limit` bytes and ignore SIGXFSZ, so a write past it fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _lower_limit(resource.RLIMIT_FSIZE, limit)


def _data_bytes() -> int | None:
    """Return the process's VmData in bytes, or None where /proc does not give it."""
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def set_not_dumpable() -> None:
    """Clear the dumpable flag, which guards ptrace and ``/proc/PID/mem``."""
    libc = _libc()
    if libc is None:
        raise OSError("prctl exists only on Linux")
    _prctl(libc, PR_SET_DUMPABLE, 0)
    if libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError("the dumpable flag is still set after PR_SET_DUMPABLE 0")


def set_no_new_privileges() -> None:
    """Set PR_SET_NO_NEW_PRIVS, so exec can never grant privileges."""
    libc = _libc()
    if libc is None:
        raise OSError("prctl exists only on Linux")
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)


def drop_capabilities(keep: tuple[int, ...] = (CAP_IPC_LOCK,)) -> None:
    """Drop every capability but those in `keep`, from the bounding set too.

    CAP_IPC_LOCK stays by default because with ``mlockall(MCL_FUTURE)`` each
    later mapping is locked, and without the capability that would count
    against RLIMIT_MEMLOCK and fail once the limit is reached.
    """
    libc = _libc()
    if libc is None:
        raise OSError("capabilities exist only on Linux")
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as file:
        last_cap = int(file.read())
    keep_mask = 0
    for cap in keep:
        keep_mask |= 1 << cap
    # Dropping from the bounding set needs CAP_SETPCAP, so it comes first,
    # while the process still has it. Without CAP_SETPCAP (an unprivileged
    # user) the bounding set cannot matter because there is nothing to gain.
    if _has_capability(CAP_SETPCAP):
        for cap in range(last_cap + 1):
            if not keep_mask & (1 << cap):
                _prctl(libc, PR_CAPBSET_DROP, cap)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    current = _effective_capabilities()
    for word in range(2):
        mask = (keep_mask & current) >> (32 * word) & 0xFFFFFFFF
        data[word].effective = mask
        data[word].permitted = mask
        data[word].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _has_capability(cap: int) -> bool:
    return bool(_effective_capabilities() & (1 << cap))


def lock_memory() -> None:
    """Lock current and future pages in RAM with ``mlockall``.

    Skipped, by raising OSError, unless the process has CAP_IPC_LOCK or an
    unlimited RLIMIT_MEMLOCK: under MCL_FUTURE a limited process would get
    allocation failures later, once its locked pages reach the limit.
    """
    libc = _libc()
    if libc is None:
        raise OSError("mlockall is used only on Linux")
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and not _has_capability(CAP_IPC_LOCK):
        raise OSError(f"RLIMIT_MEMLOCK is {soft} bytes and CAP_IPC_LOCK is missing")
    threading.stack_size(_THREAD_STACK_BYTES)
    # MCL_ONFAULT (Linux 4.4) locks each page when it is first touched
    # instead of faulting in every mapping at once. A page that ever holds
    # a key or a fragment has been touched, so it is locked all the same,
    # while the untouched parts of shared libraries stay out of RAM: an
    # idle holder's RSS drops from about 47 MB to 37 MB.
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return
    if ctypes.get_errno() == errno.EINVAL and libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
        return  # a kernel older than 4.4, without MCL_ONFAULT
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code))


def die_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent exits, and exit now if it already has."""
    libc = _libc()
    if libc is None:
        raise OSError("PR_SET_PDEATHSIG exists only on Linux")
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent may have exited between fork and prctl, in which case the
    # signal never comes and the process has been re-parented already.
    if os.getppid() != parent_pid:
        raise SystemExit(f"parent process {parent_pid} exited before the holder started")


def harden(parent_pid: int | None = None, limits: ResourceLimits | None = None) -> HardeningReport:
    """Apply every hardening step and report which took effect.

    Call it first thing, before any secret or key exists in memory. A step
    that fails is logged at INFO and skipped. A parent that exited already is
    the one fatal case: die_with_parent raises SystemExit. `limits` defaults
    to ResourceLimits().
    """
    limits = ResourceLimits() if limits is None else limits
    report = HardeningReport()
    steps = [
        ("core dumps disabled", disable_core_dumps),
        ("not dumpable", set_not_dumpable),
        ("no new privileges", set_no_new_privileges),
        ("capabilities dropped", drop_capabilities),
        ("memory locked", lock_memory),
        ("open files limited", lambda: limit_open_files(limits.open_files)),
        ("data size limited", lambda: limit_data(limits.data_bytes)),
        ("file size limited", lambda: limit_file_size(limits.file_bytes)),
    ]
    if parent_pid is not None:
        steps.append(("dies with parent", lambda: die_with_parent(parent_pid)))
    for name, step in steps:
        try:
            step()
        except (OSError, ValueError) as exc:
            report.skipped[name] = str(exc)
            log.info("hardening step %r skipped: %s", name, exc)
        else:
            report.applied.append(name)
    return report
