"""A holder backend that runs each holder in its own QEMU microVM.

Each holder gets its own guest kernel and memory, so its HPKE private key
and fragments live only in that guest's RAM, out of reach of every host
process that cannot read QEMU's memory. The guest boots the kernel and
initramfs of ``microvm_image``, mounts the host's Python and the holder
code read-only over 9p, and runs ``python -m holders`` (see
``microvm_init.sh``). ``microvm_qemu`` builds the QEMU command line.

The guest reports its public key on a virtio serial port whose host end is
one half of a socket pair that only the backend holds, the VM equivalent of
the process backend's key pipe. With Kafka TLS on, the backend sends the
holder's certificate and key the other way on the same port, so they never
touch the host's disk. The backend requests a clean stop by writing
"stop" on the same port: the holder wipes its fragments and the guest
powers off, which ends QEMU. A guest that does not stop in time gets SIGTERM
(QEMU then powers it off at once) and then SIGKILL.

Like process holders, VMs outlive the provisioner: QEMU runs in a session of
its own, started with ``subprocess.Popen``, and the guest ignores the end of
its control channel. A restarted provisioner adopts a running VM by finding
the QEMU process named after the holder (``find_qemu_pid``) and trusts the
public key the registry recorded. An adopted VM has no control channel, so
stopping it sends SIGTERM to QEMU at once, which discards the guest's memory
with everything the holder kept.

A holder leaves no file on the host. Its console log,
``<log_dir>/<holder id>.log``, exists while the VM runs, and stop()
deletes it, after copying its last lines into the provisioner's log when
the VM failed (see ``microvm_console``). ``keep_console_logs`` keeps them
for debugging. The kernel and initramfs are shared by all guests.
``benchmarks/holder_backends.py`` measures boot time and memory (figures
in docs/benchmarks.md).

NOTE: guest memory is not locked on the host. The holder's ``mlockall``
keeps its pages in guest RAM, but the host may swap QEMU's memory out like
any other process's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import holders
from provisioner.backend import BackendStatus, HolderBackend, HolderSpec, HolderTls
from provisioner.microvm_console import discard_console
from provisioner.microvm_host import end_qemu, end_relays, find_qemu_pid, runs_guest
from provisioner.microvm_image import GuestImage, default_cache_dir, guest_image
from provisioner.microvm_qemu import (
    BrokerForward,
    GuestSettings,
    broker_forwards,
    host_shares,
    qemu_command,
    tsc_khz,
)
from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_SOURCE_ROOT = str(Path(holders.__file__).resolve().parent.parent)
_KEY_LINE_LIMIT = 4096

#: Guest memory. Debian's kernel keeps about 60 MiB for itself, and the
#: holder locks about 48 MiB (``mlockall``), so 128 MiB runs out of memory
#: while Python imports; 160 MiB leaves about 23 MiB free.
DEFAULT_MEMORY_MIB = 160


def tls_message(tls: HolderTls) -> bytes:
    """Return the holder's TLS files as the guest's init reads them from the control port."""
    files = (tls.ca_pem, tls.certificate_pem, tls.key_pem)
    header = "tls " + " ".join(str(len(data)) for data in files) + "\n"
    return header.encode("ascii") + b"".join(files)


@dataclass
class _Guest:
    holder_id: str
    kem: str
    pid: int
    #: QEMU's Popen and the control socket, both None for an adopted VM.
    popen: subprocess.Popen | None = None
    control: socket.socket | None = None
    writer: asyncio.StreamWriter | None = None
    public_key: bytes = b""
    key_reader: asyncio.Task[None] | None = None

    @property
    def adopted(self) -> bool:
        return self.popen is None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return runs_guest(self.pid, self.holder_id)


class MicroVMBackend(HolderBackend):
    """Runs each holder in a QEMU microVM; see the module docstring.

    `accelerator` is "tcg" (software emulation), "kvm", or "auto", which
    boots one probe guest with KVM on first use and falls back to TCG unless
    it reports back within `probe_timeout_s`. Some hosts expose a /dev/kvm
    that cannot run a stock guest kernel, so its presence proves nothing.
    `kvm_device` is the KVM device that the probe needs. `cache_dir`
    contains the kernel, busybox and initramfs that ``scripts/microvm-setup``
    installs. With `keep_console_logs`, stop() leaves each VM's console log
    (and the probe's) in `log_dir` instead of deleting it.

    At most `max_booting` guests (default: one per CPU core) boot at once,
    and start() waits for one of them to report its key before it launches
    another. Booting is CPU-bound under TCG, so guests that boot together
    only share the cores, and a burst of starts would make every one of
    them ready late instead of the first ones early.
    """

    reports_public_key = True
    can_adopt = True

    def __init__(
        self,
        log_dir: Path,
        *,
        python: str = sys.executable,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        accelerator: str = "auto",
        qemu: str = "qemu-system-x86_64",
        cache_dir: Path | None = None,
        probe_timeout_s: float = 10.0,
        max_booting: int | None = None,
        kvm_device: Path = Path("/dev/kvm"),
        keep_console_logs: bool = False,
    ) -> None:
        if accelerator not in ("auto", "tcg", "kvm"):
            raise ValueError(f"accelerator must be auto, tcg or kvm, got {accelerator!r}")
        if memory_mib < 128:
            raise ValueError(f"memory_mib must be at least 128, got {memory_mib}")
        self._log_dir = Path(log_dir)
        self._python = python
        self._memory_mib = memory_mib
        self._accelerator = accelerator
        self._qemu = qemu
        self._cache_dir = cache_dir or default_cache_dir()
        self._probe_timeout_s = probe_timeout_s
        self._kvm_device = Path(kvm_device)
        self._keep_console_logs = keep_console_logs
        self._guests: dict[str, _Guest] = {}
        self._prepared: tuple[GuestImage, tuple[str, ...], str] | None = None
        self._prepare_lock = asyncio.Lock()
        max_booting = max_booting or os.cpu_count() or 1
        if max_booting < 1:
            raise ValueError(f"max_booting must be at least 1, got {max_booting}")
        self._boot_slots = asyncio.Semaphore(max_booting)
        self._env_program = Path("/usr/bin/env")

    @property
    def accelerator(self) -> str | None:
        """The accelerator in use, "tcg" or "kvm", or None before the first start."""
        return None if self._prepared is None else self._prepared[2]

    async def prepare(self) -> None:
        """Build the initramfs, find the folders to share and choose the accelerator.

        The first start() calls it; calling it earlier moves that work (and
        the KVM probe, up to `probe_timeout_s`) out of the first holder's
        start. Raises ServiceUnavailable when QEMU or the guest files are
        missing.
        """
        async with self._prepare_lock:
            if self._prepared is not None:
                return
            qemu = shutil.which(self._qemu)
            if qemu is None:
                raise ServiceUnavailable(f"{self._qemu} was not found on PATH; run scripts/microvm-setup")
            self._qemu = qemu
            env_program = shutil.which("env")
            if env_program is None:
                raise ServiceUnavailable("env was not found on PATH; install coreutils")
            self._env_program = Path(env_program)
            self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                image = guest_image(self._cache_dir, runtime_dir=self._cache_dir)
                shares = await asyncio.to_thread(host_shares, self._python, _SOURCE_ROOT)
            except (OSError, ValueError) as exc:
                raise ServiceUnavailable(f"cannot prepare microVM holders: {exc}") from None
            accelerator = self._accelerator
            if accelerator == "auto":
                accelerator = "kvm" if await self._kvm_boots(image) else "tcg"
            log.info("microVM holders use %s, %d MiB each, sharing %s read-only",
                     accelerator, self._memory_mib, ", ".join(shares))
            self._prepared = (image, tuple(shares), accelerator)

    # NOTE: only hosts whose /dev/kvm fails the probe have run this backend
    # so far, so guests under KVM have never booted a holder in a test.
    async def _kvm_boots(self, image: GuestImage) -> bool:
        if not os.access(self._kvm_device, os.R_OK | os.W_OK):
            log.info("KVM probe: %s is missing or not accessible; using TCG", self._kvm_device)
            return False
        console = self._log_dir / "kvm-probe.log"
        line = b""
        try:
            popen, control = self._launch("kvm-probe", image, (), (), "kvm", console, ("shardbus.probe=1",))
            probe = _Guest("kvm-probe", "", popen.pid, popen, control)
            try:
                reader, writer = await asyncio.open_unix_connection(sock=control, limit=_KEY_LINE_LIMIT)
                try:
                    line = await asyncio.wait_for(reader.readline(), self._probe_timeout_s)
                finally:
                    writer.close()
            except (asyncio.TimeoutError, OSError, ValueError):
                line = b""
            finally:
                control.close()
                await end_qemu(probe.holder_id, probe.pid, probe.alive, 2.0)
        finally:
            booted = line.strip() == b"probe ok"
            failure = None if booted else f"did not report within {self._probe_timeout_s:g} s or QEMU failed"
            # The probe fails on every host without a working KVM, so its
            # console goes to the log at INFO level.
            discard_console(console, "kvm-probe", failure, keep=self._keep_console_logs, level=logging.INFO)
        if booted:
            log.info("KVM probe: a guest booted with KVM; using KVM")
        else:
            log.info("KVM probe: no guest booted with KVM; using TCG")
        return booted

    def _launch(
        self,
        name: str,
        image: GuestImage,
        shares: tuple[str, ...],
        forwards: list[BrokerForward] | tuple[()],
        accelerator: str,
        console: Path,
        init_words: tuple[str, ...],
    ) -> tuple[subprocess.Popen, socket.socket]:
        # One socket of the pair goes to QEMU as its control chardev; the
        # other stays here, so no other process can reach the guest's port.
        host_end, guest_end = socket.socketpair()
        settings = GuestSettings(
            name=name, kernel=image.kernel, initramfs=image.initramfs, accelerator=accelerator,
            memory_mib=self._memory_mib, shares=tuple(shares), forwards=tuple(forwards),
            relay_program=self._cache_dir / "busybox", env_program=self._env_program,
            console_log=console, control_fd=guest_end.fileno(),
            init_words=tuple(init_words), tsc_khz=tsc_khz(),
        )
        log_fd = -1
        try:
            command = qemu_command(self._qemu, settings)
            log_fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            # Popen, unlike asyncio's subprocess transport, never kills its
            # child when garbage collected, and a session of its own keeps a
            # signal to the provisioner's process group from reaching QEMU:
            # the VMs outlive the provisioner on purpose.
            popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                start_new_session=True, pass_fds=(guest_end.fileno(),),
            )
        except (OSError, ValueError) as exc:
            host_end.close()
            raise ServiceUnavailable(f"cannot start the microVM of {name}: {exc}") from None
        finally:
            if log_fd >= 0:
                os.close(log_fd)
            guest_end.close()
        return popen, host_end

    async def start(self, spec: HolderSpec) -> BackendStatus:
        if spec.holder_id in self._guests:
            raise ValueError(f"holder {spec.holder_id} is already running; stop it before starting it again")
        await self.prepare()
        assert self._prepared is not None
        image, shares, accelerator = self._prepared

        try:
            forwards = broker_forwards(spec.kafka_bootstrap)
        except ValueError as exc:
            raise ServiceUnavailable(f"cannot start holder {spec.holder_id}: {exc}") from None
        init_words = (
            f"shardbus.python={self._python}", f"shardbus.pythonpath={_SOURCE_ROOT}",
            f"shardbus.holder_id={spec.holder_id}", f"shardbus.bootstrap={spec.kafka_bootstrap}",
            f"shardbus.prefix={spec.topic_prefix}", f"shardbus.heartbeat={spec.heartbeat_interval_s:g}",
            f"shardbus.kem={spec.kem}",
        ) + (("shardbus.tls=1",) if spec.tls is not None else ())
        console = self._console(spec.holder_id)

        await self._boot_slots.acquire()
        try:
            popen, control = self._launch(spec.holder_id, image, shares, forwards, accelerator, console, init_words)
            reader, writer = await asyncio.open_unix_connection(sock=control, limit=_KEY_LINE_LIMIT)
        except BaseException:
            self._boot_slots.release()
            raise

        guest = _Guest(spec.holder_id, spec.kem, popen.pid, popen, control, writer)
        if spec.tls is not None:
            # The socket buffer keeps the files until the guest's init reads
            # them, so they never touch the host's disk.
            writer.write(tls_message(spec.tls))
        guest.key_reader = asyncio.create_task(self._await_key(guest, reader), name=f"key-{spec.holder_id}")
        self._guests[spec.holder_id] = guest
        log.info("started holder %s in a %s microVM, qemu pid %d, log %s",
                 spec.holder_id, accelerator, popen.pid, console)
        return self._status(guest)

    def adopt(self, holder_id: str, pid: int, public_key: bytes, kem: str) -> BackendStatus | None:
        """Take over a VM that an earlier provisioner started.

        The registry records no pid for a VM (the status reports 0), so
        `pid` is ignored and the QEMU process is found by its name. Returns
        None when no such QEMU runs. The key is trusted as given, because
        the control channel that carried it closed with that provisioner.
        """
        if holder_id in self._guests:
            raise ValueError(f"holder {holder_id} is tracked already; adopt only holders of an earlier provisioner")
        qemu_pid = find_qemu_pid(holder_id)
        if qemu_pid is None:
            # The VM ended while no provisioner watched it, and only its
            # console log is left.
            discard_console(self._console(holder_id), holder_id, "ended while no provisioner watched it",
                            keep=self._keep_console_logs)
            return None
        guest = _Guest(holder_id, kem, qemu_pid, public_key=public_key)
        self._guests[holder_id] = guest
        log.info("adopted holder %s running in the microVM of qemu pid %d", holder_id, qemu_pid)
        return self._status(guest)

    async def _await_key(self, guest: _Guest, reader: asyncio.StreamReader) -> None:
        # The boot slot is free once the key arrives, the guest fails or
        # the holder is stopped, whichever comes first.
        try:
            await self._read_public_key(guest, reader)
        finally:
            self._boot_slots.release()

    @staticmethod
    async def _read_public_key(guest: _Guest, reader: asyncio.StreamReader) -> None:
        """Read the holder's one line, "<kem> <public key in hex>", from the control port."""
        holder_id = guest.holder_id
        try:
            line = await reader.readline()
        except ValueError:
            log.warning("holder %s wrote more than %d bytes to its control port; ignoring it",
                        holder_id, _KEY_LINE_LIMIT)
            return
        except OSError as exc:
            log.warning("could not read the control port of holder %s: %s", holder_id, exc)
            return
        kem, _, key_hex = line.decode("ascii", errors="replace").strip().partition(" ")
        try:
            public_key = bytes.fromhex(key_hex)
        except ValueError:
            public_key = b""
        if kem != guest.kem or not public_key:
            log.warning("holder %s reported no valid %s public key on its control port", holder_id, guest.kem)
            return
        guest.public_key = public_key

    async def stop(self, holder_id: str, timeout_s: float = 5.0) -> None:
        guest = self._guests.pop(holder_id, None)
        if guest is None:
            return
        if guest.key_reader is not None:
            guest.key_reader.cancel()
            await asyncio.gather(guest.key_reader, return_exceptions=True)

        alive = guest.alive()
        failure = None
        if not alive:
            failure = "exited before it was asked to stop"
        elif not guest.public_key:
            failure = "was stopped before it reported its public key"

        # A VM that has not reported its key yet was never handed out and
        # has nothing to wipe, and an adopted VM cannot be asked, so
        # QEMU gets SIGTERM at once for both.
        polite = alive and guest.writer is not None and bool(guest.public_key)
        if polite:
            try:
                guest.writer.write(b"stop\n")
                await asyncio.wait_for(guest.writer.drain(), 1.0)
            except (OSError, asyncio.TimeoutError) as exc:
                log.info("could not send stop to holder %s: %s", holder_id, exc)
        exited = await end_qemu(holder_id, guest.pid, guest.alive, timeout_s if polite else 0.0)
        if polite and not exited:
            failure = f"did not power off within {timeout_s:g} s of the stop request"

        if guest.writer is not None:
            guest.writer.close()
        if guest.control is not None:
            guest.control.close()
        await end_relays(holder_id)
        discard_console(self._console(holder_id), holder_id, failure, keep=self._keep_console_logs)
        code = "unknown, adopted" if guest.popen is None else guest.popen.returncode
        log.info("stopped holder %s (qemu pid %d, exit code %s)", holder_id, guest.pid, code)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every holder this backend started or adopted, and release the initramfs."""
        await super().close(timeout_s)
        if self._prepared is not None:
            self._prepared[0].release()
            self._prepared = None

    def status(self, holder_id: str) -> BackendStatus | None:
        guest = self._guests.get(holder_id)
        return None if guest is None else self._status(guest)

    def holder_ids(self) -> list[str]:
        return list(self._guests)

    def qemu_pid(self, holder_id: str) -> int | None:
        """Return the pid of the holder's QEMU process, or None for an unknown id."""
        guest = self._guests.get(holder_id)
        return None if guest is None else guest.pid

    def log_path(self, holder_id: str) -> Path | None:
        """Return the console log of a holder that the backend tracks, or None for an unknown id."""
        return self._console(holder_id) if holder_id in self._guests else None

    def _console(self, holder_id: str) -> Path:
        return self._log_dir / f"{holder_id}.log"

    @staticmethod
    def _status(guest: _Guest) -> BackendStatus:
        alive = guest.alive()
        code = None if guest.popen is None else guest.popen.returncode
        if alive:
            detail = f"qemu pid {guest.pid}, running" + (" (adopted)" if guest.adopted else "")
        elif guest.adopted:
            detail = f"qemu pid {guest.pid}, exited (adopted, so the exit code is unknown)"
        else:
            detail = f"qemu pid {guest.pid}, exited with code {code}"
        # The heartbeat carries the holder's pid inside the guest, which the
        # host cannot check, so the status reports no pid and the public
        # key from the control port identifies the holder instead.
        return BackendStatus(
            holder_id=guest.holder_id, alive=alive, pid=0, exit_code=code,
            detail=detail, public_key=guest.public_key,
        )
