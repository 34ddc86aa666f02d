"""The default holder backend: one OS process per holder.

Each holder runs as ``python -m holders`` with a minimal environment (only the
Kafka bootstrap and the topic prefix), a private working folder (mode 0700,
removed when the holder stops) and its output in a log file of its own. The
holder hardens itself at start-up (see ``holders.hardening``).

Holders outlive the provisioner: they run in sessions of their own, without a
parent-death signal, and are started with ``subprocess.Popen``, whose objects
never kill their child when garbage collected (asyncio's subprocess transport
does). A restarted provisioner takes over the holders still running with
`adopt`, which finds each by the process id the registry recorded and checks
its command line before trusting it.

The holder writes its public key to a pipe that only the provisioner reads
(``--key-fd``), so a heartbeat forged by another producer on the shared
heartbeat topic cannot plant a key of its own. An adopted holder's pipe died
with the provisioner that started it, so its key is the one that provisioner
recorded in the registry after checking it against the pipe.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import holders
from provisioner.backend import BackendStatus, HolderBackend, HolderSpec, HolderTls
from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# The folder that contains the ``holders`` package, put on the holder's
# PYTHONPATH so that it imports the same code as the provisioner, installed
# or not.
_SOURCE_ROOT = str(Path(holders.__file__).resolve().parent.parent)


#: Maximum line length accepted on the key pipe, in bytes. The KEM name and
#: a hex-encoded hybrid public key (1216 bytes) fit with room to spare.
_KEY_LINE_LIMIT = 4096


#: Pause between two checks of whether a stopping holder has exited.
_EXIT_POLL_S = 0.05

#: Prefix of a holder's working folder under the system's temporary folder.
_WORKDIR_PREFIX = "shardbus-"


@dataclass
class _Process:
    holder_id: str
    pid: int
    log_path: Path
    #: The child's Popen, or None for a holder adopted from an earlier provisioner.
    popen: subprocess.Popen | None = None
    #: The working folder, or None when adopted (then found by its name prefix).
    workdir: Path | None = None
    kem: str = ""
    public_key: bytes = b""
    key_reader: asyncio.Task[None] | None = None

    @property
    def adopted(self) -> bool:
        return self.popen is None


def _write_tls_files(tls: HolderTls, workdir: Path) -> dict[str, str]:
    """Write the holder's TLS files into its private working folder; return the variables naming them.

    The folder is removed when the holder stops, and the key never leaves it.
    """
    files = {
        "SHARDBUS_KAFKA_TLS_CA": ("ca.pem", tls.ca_pem),
        "SHARDBUS_KAFKA_TLS_CERT": ("holder.pem", tls.certificate_pem),
        "SHARDBUS_KAFKA_TLS_KEY": ("holder.key", tls.key_pem),
    }
    env = {}
    for variable, (name, data) in files.items():
        path = workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        env[variable] = str(path)
    return env


def find_workdirs(holder_id: str) -> list[Path]:
    """Return the working folders of a holder that this host's process backend started.

    The folders are found by their names under the system's temporary
    folder. A TLS holder's certificate is ``holder.pem`` in its folder.
    """
    pattern = os.path.join(tempfile.gettempdir(), f"{_WORKDIR_PREFIX}{glob.escape(holder_id)}-*")
    return [Path(folder) for folder in glob.glob(pattern)]


class ProcessBackend(HolderBackend):
    """Runs each holder as an OS process that outlives the provisioner.

    `log_dir` receives one ``<holder id>.log`` file per holder (mode 0600).
    `python` is the interpreter to run, by default the provisioner's own.
    """

    reports_public_key = True
    can_adopt = True

    def __init__(self, log_dir: Path, *, python: str = sys.executable) -> None:
        self._log_dir = Path(log_dir)
        self._python = python
        self._processes: dict[str, _Process] = {}

    def _environment(self, spec: HolderSpec, workdir: Path) -> dict[str, str]:
        env = {
            "SHARDBUS_KAFKA_BOOTSTRAP": spec.kafka_bootstrap,
            "SHARDBUS_TOPIC_PREFIX": spec.topic_prefix,
            "PYTHONPATH": _SOURCE_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
        }
        if spec.tls is not None:
            env.update(_write_tls_files(spec.tls, workdir))
        return env

    async def start(self, spec: HolderSpec) -> BackendStatus:
        if spec.holder_id in self._processes:
            raise ValueError(f"holder {spec.holder_id} is already running; stop it before starting it again")
        self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{spec.holder_id}-"))
        log_path = self._log_dir / f"{spec.holder_id}.log"
        command = [
            self._python, "-m", "holders",
            "--holder-id", spec.holder_id,
            "--heartbeat-interval", str(spec.heartbeat_interval_s),
            "--kem", spec.kem,
        ]

        key_read_fd, key_write_fd = os.pipe()
        command += ["--key-fd", str(key_write_fd)]
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=workdir,
                env=self._environment(spec, workdir),
                # A session of its own keeps a Ctrl-C or a signal to the
                # provisioner's process group from reaching the holders, which
                # outlive the provisioner on purpose.
                start_new_session=True,
                pass_fds=(key_write_fd,),
            )
        except OSError as exc:
            os.close(key_read_fd)
            shutil.rmtree(workdir, ignore_errors=True)
            raise ServiceUnavailable(f"cannot start holder {spec.holder_id}: {exc}") from None
        finally:
            os.close(log_fd)
            os.close(key_write_fd)

        entry = _Process(spec.holder_id, popen.pid, log_path, popen=popen, workdir=workdir, kem=spec.kem)
        entry.key_reader = asyncio.create_task(self._read_public_key(entry, key_read_fd),
                                               name=f"key-{spec.holder_id}")
        self._processes[spec.holder_id] = entry
        log.info("started holder %s as pid %d, log %s", spec.holder_id, popen.pid, log_path)
        return self._status(entry)

    def adopt(self, holder_id: str, pid: int, public_key: bytes, kem: str) -> BackendStatus | None:
        """Take over a holder that an earlier provisioner started.

        Returns its status, or None when no holder with this id runs as
        `pid`: the process exited, or the id now belongs to another program.
        The key is trusted as given, because the pipe that carried it closed
        with the provisioner that read it.
        """
        if holder_id in self._processes:
            raise ValueError(f"holder {holder_id} is tracked already; adopt only holders of an earlier provisioner")
        if pid <= 0 or not _runs_holder(pid, holder_id):
            return None
        entry = _Process(holder_id, pid, self._log_dir / f"{holder_id}.log", kem=kem, public_key=public_key)
        self._processes[holder_id] = entry
        log.info("adopted holder %s running as pid %d", holder_id, pid)
        return self._status(entry)

    async def stop(self, holder_id: str, timeout_s: float = 5.0) -> None:
        entry = self._processes.pop(holder_id, None)
        if entry is None:
            return
        if entry.key_reader is not None:
            entry.key_reader.cancel()
        try:
            if self._alive(entry):
                _signal(entry.pid, signal.SIGTERM)
                if not await self._wait_exit(entry, timeout_s):
                    log.warning("holder %s (pid %d) ignored SIGTERM for %g s; killing it",
                                holder_id, entry.pid, timeout_s)
                    _signal(entry.pid, signal.SIGKILL)
                    await self._wait_exit(entry, timeout_s)
        finally:
            self._remove_workdir(entry)
        code = entry.popen.returncode if entry.popen is not None else None
        log.info("stopped holder %s (pid %d, exit code %s)", holder_id, entry.pid,
                 "unknown, adopted" if entry.adopted else code)

    async def _wait_exit(self, entry: _Process, timeout_s: float) -> bool:
        # Polled, because an adopted holder is not our child and cannot be
        # waited for, and a Popen wait would block the event loop.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._alive(entry):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_EXIT_POLL_S)
        return True

    def _remove_workdir(self, entry: _Process) -> None:
        if entry.workdir is not None:
            shutil.rmtree(entry.workdir, ignore_errors=True)
            return
        for folder in find_workdirs(entry.holder_id):
            shutil.rmtree(folder, ignore_errors=True)

    async def _read_public_key(self, entry: _Process, read_fd: int) -> None:
        """Read the holder's one line, "<kem> <public key in hex>", from the key pipe."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_KEY_LINE_LIMIT)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        holder_id = entry.holder_id
        try:
            line = await reader.readline()
        except ValueError:
            log.warning("holder %s wrote more than %d bytes to its key pipe; ignoring it",
                        holder_id, _KEY_LINE_LIMIT)
            return
        finally:
            transport.close()
        kem, _, key_hex = line.decode("ascii", errors="replace").strip().partition(" ")
        try:
            public_key = bytes.fromhex(key_hex)
        except ValueError:
            public_key = b""
        if kem != entry.kem or not public_key:
            log.warning("holder %s reported no valid %s public key on its key pipe", holder_id, entry.kem)
            return
        entry.public_key = public_key

    def status(self, holder_id: str) -> BackendStatus | None:
        entry = self._processes.get(holder_id)
        return None if entry is None else self._status(entry)

    def holder_ids(self) -> list[str]:
        return list(self._processes)

    def log_path(self, holder_id: str) -> Path | None:
        """Return the holder's log file, or None for an unknown id."""
        entry = self._processes.get(holder_id)
        return None if entry is None else entry.log_path

    @staticmethod
    def _alive(entry: _Process) -> bool:
        if entry.popen is not None:
            return entry.popen.poll() is None
        return _runs_holder(entry.pid, entry.holder_id)

    def _status(self, entry: _Process) -> BackendStatus:
        alive = self._alive(entry)
        code = entry.popen.returncode if entry.popen is not None else None
        if alive:
            detail = f"pid {entry.pid}, running" + (" (adopted)" if entry.adopted else "")
        elif entry.adopted:
            detail = f"pid {entry.pid}, exited (adopted, so the exit code is unknown)"
        else:
            detail = f"pid {entry.pid}, exited with code {code}"
        return BackendStatus(
            holder_id=entry.holder_id,
            alive=alive,
            pid=entry.pid,
            exit_code=code,
            detail=detail,
            public_key=entry.public_key,
        )


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _runs_holder(pid: int, holder_id: str) -> bool:
    """Tell whether `pid` is a live ``python -m holders --holder-id <holder_id>`` process.

    The command line is read from /proc, which a holder leaves readable
    even though it makes itself not dumpable. A zombie counts as exited.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            arguments = file.read().split(b"\0")
    except (OSError, IndexError):
        return False
    if state == b"Z":
        return False
    expected = [b"-m", b"holders", b"--holder-id", holder_id.encode()]
    return any(arguments[i:i + len(expected)] == expected for i in range(len(arguments)))
