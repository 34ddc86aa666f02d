"""CPU time and memory of processes, read from /proc (Linux only).

The load generator samples each shardbus process before and after a run:
CPU is the change in utime + stime over the run's wall time, as a share of
one core; memory is the resident set size (VmRSS) at the end, and PSS from
``/proc/PID/smaps_rollup``, where the kernel splits each shared page among
the processes that map it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One reading of one process."""

    cpu_s: float
    rss_bytes: int


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of `pid` so far, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        text = file.read()
    # The command name in field 2 may contain spaces, so split after its ")".
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def status_bytes(pid: int, field: str) -> int:
    """Return a size field of /proc/PID/status such as VmRSS, in bytes (0 if absent)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rollup_bytes(pid: int, field: str) -> int:
    """Return a field of /proc/PID/smaps_rollup such as Pss or Locked, in bytes."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def sample(pid: int) -> Sample | None:
    """Return the CPU time and RSS of `pid`, or None if it has exited."""
    try:
        return Sample(cpu_seconds(pid), status_bytes(pid, "VmRSS"))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def children(parent_pid: int) -> list[int]:
    """Return the pids whose parent is `parent_pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as file:
                text = file.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent_pid:
            found.append(int(entry))
    return found


def loadavg() -> str:
    """Return the 1, 5 and 15 minute load averages as printed in /proc/loadavg."""
    with open("/proc/loadavg", encoding="ascii") as file:
        return " ".join(file.read().split()[:3])


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
        for line in file:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


class CpuMeter:
    """Measures CPU share and final RSS of named groups of processes over one interval.

    A group is a name and a function that returns its pids now, so holders
    started during the interval are counted from their first sample on.
    """

    def __init__(self, groups: dict[str, callable]) -> None:
        self._groups = groups
        self._start: dict[int, float] = {}

    def start(self) -> None:
        self._start = {}
        for pids in self._groups.values():
            for pid in pids():
                reading = sample(pid)
                if reading is not None:
                    self._start[pid] = reading.cpu_s

    def stop(self, wall_s: float) -> dict[str, tuple[float, int, int]]:
        """Return, per group: CPU as a percentage of one core, RSS in bytes and the process count."""
        result = {}
        for name, pids in self._groups.items():
            cpu = 0.0
            rss = 0
            count = 0
            for pid in pids():
                reading = sample(pid)
                if reading is None:
                    continue
                cpu += reading.cpu_s - self._start.get(pid, reading.cpu_s)
                rss += reading.rss_bytes
                count += 1
            result[name] = (100 * cpu / wall_s if wall_s > 0 else 0.0, rss, count)
        return result
