"""The default holder backend: one OS process per holder.

Each holder runs as ``python -m holders`` with a minimal environment (only the
Kafka bootstrap and the topic prefix), a private working folder (mode 0700,
removed when the holder stops) and its output in a log file of its own. The
holder hardens itself at start-up (see ``holders.hardening``) and exits with
SIGTERM when the provisioner does.

The holder writes its public key to a pipe that only the provisioner reads
(``--key-fd``), so a heartbeat forged by another producer on the shared
heartbeat topic cannot plant a key of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import holders
from provisioner.backend import HolderBackend, HolderSpec, BackendStatus
from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# The folder that contains the ``holders`` package, put on the holder's
# PYTHONPATH so that it imports the same code as the provisioner, installed
# or not.
_SOURCE_ROOT = str(Path(holders.__file__).resolve().parent.parent)


#: Maximum line length accepted on the key pipe, in bytes. The KEM name and
#: a hex-encoded hybrid public key (1216 bytes) fit with room to spare.
_KEY_LINE_LIMIT = 4096


@dataclass
class _Process:
    spec: HolderSpec
    process: asyncio.subprocess.Process
    workdir: Path
    log_path: Path
    public_key: bytes = b""
    key_reader: asyncio.Task[None] | None = None


class ProcessBackend(HolderBackend):
    """Runs each holder as a child process of the provisioner.

    `log_dir` receives one ``<holder id>.log`` file per holder (mode 0600).
    `python` is the interpreter to run, by default the provisioner's own.
    """

    reports_public_key = True

    def __init__(self, log_dir: Path, *, python: str = sys.executable) -> None:
        self._log_dir = Path(log_dir)
        self._python = python
        self._processes: dict[str, _Process] = {}

    def _environment(self, spec: HolderSpec, workdir: Path) -> dict[str, str]:
        return {
            "SHARDBUS_KAFKA_BOOTSTRAP": spec.kafka_bootstrap,
            "SHARDBUS_TOPIC_PREFIX": spec.topic_prefix,
            "PYTHONPATH": _SOURCE_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
        }

    async def start(self, spec: HolderSpec) -> BackendStatus:
        if spec.holder_id in self._processes:
            raise ValueError(f"holder {spec.holder_id} is already running; stop it before starting it again")
        self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        workdir = Path(tempfile.mkdtemp(prefix=f"shardbus-{spec.holder_id}-"))
        log_path = self._log_dir / f"{spec.holder_id}.log"
        command = [
            self._python, "-m", "holders",
            "--holder-id", spec.holder_id,
            "--heartbeat-interval", str(spec.heartbeat_interval_s),
            "--kem", spec.kem,
            "--parent-pid", str(os.getpid()),
        ]

        key_read_fd, key_write_fd = os.pipe()
        command += ["--key-fd", str(key_write_fd)]
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=workdir,
                env=self._environment(spec, workdir),
                # A new session keeps a Ctrl-C at the provisioner's terminal
                # from reaching the holders, so the provisioner can stop them
                # in order. The holder's parent-death signal covers a crash.
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

        entry = _Process(spec, process, workdir, log_path)
        entry.key_reader = asyncio.create_task(self._read_public_key(entry, key_read_fd),
                                               name=f"key-{spec.holder_id}")
        self._processes[spec.holder_id] = entry
        log.info("started holder %s as pid %d, log %s", spec.holder_id, process.pid, log_path)
        return self._status(self._processes[spec.holder_id])

    async def stop(self, holder_id: str, timeout_s: float = 5.0) -> None:
        entry = self._processes.pop(holder_id, None)
        if entry is None:
            return
        process = entry.process
        if entry.key_reader is not None:
            entry.key_reader.cancel()
        try:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout_s)
                except asyncio.TimeoutError:
                    log.warning("holder %s (pid %d) ignored SIGTERM for %g s; killing it",
                                holder_id, process.pid, timeout_s)
                    process.kill()
                    await process.wait()
        except ProcessLookupError:
            await process.wait()
        finally:
            shutil.rmtree(entry.workdir, ignore_errors=True)
        log.info("stopped holder %s (pid %d, exit code %s)", holder_id, process.pid, process.returncode)

    async def _read_public_key(self, entry: _Process, read_fd: int) -> None:
        """Read the holder's one line, "<kem> <public key in hex>", from the key pipe."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_KEY_LINE_LIMIT)
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        holder_id = entry.spec.holder_id
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
        if kem != entry.spec.kem or not public_key:
            log.warning("holder %s reported no valid %s public key on its key pipe", holder_id, entry.spec.kem)
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
    def _status(entry: _Process) -> BackendStatus:
        code = entry.process.returncode
        alive = code is None
        detail = f"pid {entry.process.pid}, " + ("running" if alive else f"exited with code {code}")
        return BackendStatus(
            holder_id=entry.spec.holder_id,
            alive=alive,
            pid=entry.process.pid,
            exit_code=code,
            detail=detail,
            public_key=entry.public_key,
        )
