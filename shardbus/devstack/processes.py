"""Start, find and stop the stack's background processes by recorded pid.

A pid file holds two lines: the pid and the process start time in clock
ticks since boot (field 22 of /proc/PID/stat). A recycled pid has another
start time, and the command line must also still contain the service's
markers, so `down` never signals a process that the stack did not start.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shardbus.devstack.errors import StackError


@dataclass(frozen=True)
class ProcessRecord:
    """A process the stack started, as stored in its pid file."""

    pid: int
    start_time: int


def read_start_time(pid: int) -> int | None:
    """Return the start time of `pid` in clock ticks, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name in brackets may contain spaces, so split after its closing bracket.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def read_cmdline(pid: int) -> str:
    """Return the command line of `pid` with arguments joined by spaces, or ''."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def write_record(pid_file: Path, pid: int) -> ProcessRecord:
    start_time = read_start_time(pid)
    if start_time is None:
        raise StackError(f"process {pid} exited before its pid file {pid_file} was written")
    record = ProcessRecord(pid, start_time)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = pid_file.with_suffix(".tmp")
    temporary.write_text(f"{pid}\n{start_time}\n")
    temporary.replace(pid_file)
    return record


def read_record(pid_file: Path) -> ProcessRecord | None:
    """Return the record in `pid_file`, or None when the file is missing or unreadable."""
    try:
        lines = pid_file.read_text().split()
        return ProcessRecord(int(lines[0]), int(lines[1]))
    except (FileNotFoundError, IndexError, ValueError):
        return None


def is_ours(record: ProcessRecord, markers: Sequence[str]) -> bool:
    """Tell whether the recorded process still runs and is the one the stack started."""
    if read_start_time(record.pid) != record.start_time:
        return False
    cmdline = read_cmdline(record.pid)
    return all(marker in cmdline for marker in markers)


def find_running(pid_file: Path, markers: Sequence[str]) -> ProcessRecord | None:
    """Return the recorded process if it is alive and ours; remove a stale pid file."""
    record = read_record(pid_file)
    if record is None:
        pid_file.unlink(missing_ok=True)
        return None
    if is_ours(record, markers):
        return record
    pid_file.unlink(missing_ok=True)
    return None


def start_background(
    argv: Sequence[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `argv` in its own session with its output appended to `log_file`.

    The process keeps running after this program exits, and a Ctrl-C in the
    terminal that ran `up` does not reach it.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(records: Sequence[ProcessRecord], timeout: float) -> list[int]:
    """Send SIGTERM to each process, then SIGKILL to those still alive after `timeout`.

    The caller has checked that each record is ours. Returns the pids that
    needed SIGKILL.
    """
    for record in records:
        _signal(record.pid, signal.SIGTERM)

    deadline = time.monotonic() + timeout
    alive = list(records)
    while alive and time.monotonic() < deadline:
        _reap(alive)
        alive = [r for r in alive if read_start_time(r.pid) == r.start_time]
        if alive:
            time.sleep(0.1)

    killed = []
    for record in alive:
        _signal(record.pid, signal.SIGKILL)
        killed.append(record.pid)
    while alive:
        _reap(alive)
        alive = [r for r in alive if read_start_time(r.pid) == r.start_time]
        if alive:
            time.sleep(0.05)
    return killed


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap(records: Sequence[ProcessRecord]) -> None:
    # A process started by this same run (one that failed its start-up check)
    # stays a zombie until reaped, and a zombie still has a /proc entry.
    for record in records:
        try:
            os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether something already listens on (or holds) `host:port`.

    The check binds with SO_REUSEADDR, like the Kafka and Redis servers do,
    so a port whose old connections linger in TIME_WAIT counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def tail(path: Path, lines: int = 30, offset: int = 0) -> str:
    """Return the last `lines` lines of `path` written after byte `offset`."""
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            data = stream.read()
    except FileNotFoundError:
        return f"({path} does not exist)"
    text = data.decode(errors="replace").rstrip("\n")
    if not text:
        return f"({path} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
