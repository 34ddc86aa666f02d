"""The microVM backend: one real VM holder, and the probe and teardown paths with a fake QEMU.

The fake QEMU is a Python script that takes QEMU's command line, writes to
the console log (its stdout) and talks on the control socket the way a
guest does, so these tests need neither QEMU nor a guest kernel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from provisioner.backend import HolderSpec
from provisioner.microvm import MicroVMBackend
from provisioner.microvm_console import TAIL_LINES, console_tail
from provisioner.microvm_host import find_qemu_pid, find_relay_pids
from schemas import codec
from schemas.holders import HolderHeartbeat
from schemas.topics import Topics
from shardbus.errors import ServiceUnavailable
from shardbus.kafka import ensure_topics

HOLDER_ID = "holder-vmbackend"



async def _first_heartbeat(bootstrap: str, topic: str, timeout_s: float) -> HolderHeartbeat:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    heartbeat = codec.decode(record.value, (HolderHeartbeat,))
                    if heartbeat.holder_id == HOLDER_ID:
                        return heartbeat
        raise AssertionError(f"no heartbeat from {HOLDER_ID} within {timeout_s:g} s")
    finally:
        await consumer.stop()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("microvm_host")
async def test_vm_reported_adopted_and_stopped(kafka_bootstrap: str, kafka_admin, topic_prefix: str,
                                               tmp_path: Path) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.holder(HOLDER_ID), topics.heartbeats])
    log_dir = tmp_path / "logs"
    first = MicroVMBackend(log_dir)
    second = MicroVMBackend(log_dir)
    try:
        status = await first.start(HolderSpec(HOLDER_ID, kafka_bootstrap, topic_prefix))
        assert status.alive
        assert status.pid == 0, "the host cannot check a guest pid, so the status must report none"
        qemu_pid = first.qemu_pid(HOLDER_ID)
        assert find_qemu_pid(HOLDER_ID) == qemu_pid

        heartbeat = await _first_heartbeat(kafka_bootstrap, topics.heartbeats, 300)
        assert first.status(HOLDER_ID).public_key == heartbeat.public_key
        assert find_relay_pids(HOLDER_ID) != [], "the holder reaches Kafka through no relay"

        # A provisioner that dies leaves its VM running; the next one adopts it.
        adopted = second.adopt(HOLDER_ID, 0, heartbeat.public_key, heartbeat.kem)
        assert adopted is not None
        assert adopted.alive
        assert adopted.public_key == heartbeat.public_key
        assert "adopted" in adopted.detail
        assert second.qemu_pid(HOLDER_ID) == qemu_pid
        assert second.adopt("holder-never-started", 0, b"k", "x25519") is None

        await second.stop(HOLDER_ID, timeout_s=10)
        assert second.status(HOLDER_ID) is None
        assert find_qemu_pid(HOLDER_ID) is None
        assert find_relay_pids(HOLDER_ID) == []
        assert not (log_dir / f"{HOLDER_ID}.log").exists(), "the stopped VM left its console log"
        assert not (log_dir / "kvm-probe.log").exists(), "the KVM probe left its console log"
        # An exiting process loses its command line before it becomes a
        # zombie that the first backend's Popen can reap, so this may lag.
        deadline = time.monotonic() + 30
        while first.status(HOLDER_ID).alive and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert first.status(HOLDER_ID).alive is False
    finally:
        await first.close(timeout_s=10)
        await second.close(timeout_s=10)
    assert find_qemu_pid(HOLDER_ID) is None


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("microvm_host")
async def test_failed_launch_frees_boot_slot(tmp_path: Path) -> None:
    backend = MicroVMBackend(tmp_path / "logs", accelerator="tcg", max_booting=1)
    # A prefix this long makes the kernel command line exceed its limit.
    spec = HolderSpec("holder-toolong", "127.0.0.1:9", "p" * 3000)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable, match="kernel command line has"):
            await asyncio.wait_for(backend.start(spec), 60)
    assert backend.holder_ids() == []
    assert find_qemu_pid("holder-toolong") is None


# -- a fake QEMU -----------------------------------------------------------------------

_FAKE_QEMU = """#!{python}
import json, os, sys, time

args = sys.argv[1:]
with open({record!r}, "a") as record:
    record.write(json.dumps({{"pid": os.getpid(), "args": args}}) + "\\n")
fd = next(int(value.rpartition("=")[2]) for value in args if value.startswith("socket,id=control,fd="))
control = os.fdopen(fd, "r+b", buffering=0)
for number in range(1, 31):
    print(f"fake console line {{number}}", flush=True)

mode = {mode!r}
if mode == "probe-ok":
    control.write(b"probe ok\\n")
elif mode == "abort":
    print("qemu-system-x86_64: error: failed to set MSR 0x38f to 0x7000000ff", file=sys.stderr, flush=True)
    sys.exit(1)
elif mode == "silent":
    time.sleep(600)
elif mode == "crash":
    sys.exit(1)
elif mode == "holder":
    control.write(b"x25519 " + b"ab" * 32 + b"\\n")
    for line in control:
        if line.strip() == b"stop":
            print("holder stopped and wiped its fragments", flush=True)
            break
"""


def _fake_qemu(tmp_path: Path, mode: str) -> Path:
    """Write a fake QEMU that acts out `mode` and records each launch in tmp_path/launches."""
    program = tmp_path / f"fake-qemu-{mode}"
    program.write_text(_FAKE_QEMU.format(python=sys.executable, record=str(tmp_path / "launches"), mode=mode))
    program.chmod(0o755)
    return program


def _launches(tmp_path: Path) -> list[dict]:
    record = tmp_path / "launches"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def _fake_cache(tmp_path: Path) -> Path:
    """Return a cache folder with the files guest_image() needs, none of them bootable."""
    cache = tmp_path / "cache"
    (cache / "kernel" / "modules").mkdir(parents=True)
    (cache / "kernel" / "vmlinux").write_bytes(b"\x7fELF not a kernel")
    (cache / "kernel" / "modules" / "modules.load").write_text("")
    # A 64-bit ELF header with one PT_LOAD program header and no PT_INTERP,
    # which the initramfs builder takes for a static busybox.
    busybox = bytearray(0x40 + 0x38)
    busybox[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", busybox, 0x20, 0x40)
    struct.pack_into("<HH", busybox, 0x36, 0x38, 1)
    struct.pack_into("<I", busybox, 0x40, 1)
    (cache / "busybox").write_bytes(bytes(busybox))
    return cache


def _fake_backend(tmp_path: Path, mode: str, **options) -> MicroVMBackend:
    kvm_device = tmp_path / "kvm"
    kvm_device.touch()
    options.setdefault("kvm_device", kvm_device)
    return MicroVMBackend(tmp_path / "logs", qemu=str(_fake_qemu(tmp_path, mode)), cache_dir=_fake_cache(tmp_path),
                          **options)


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True


async def test_probe_uses_kvm_when_guest_reports(tmp_path: Path) -> None:
    backend = _fake_backend(tmp_path, "probe-ok")
    await backend.prepare()
    assert backend.accelerator == "kvm"

    [launch] = _launches(tmp_path)
    args = launch["args"]
    assert args[args.index("-accel") + 1] == "kvm"
    assert "shardbus.probe=1" in args[args.index("-append") + 1].split()
    assert not (tmp_path / "logs" / "kvm-probe.log").exists()
    await backend.close()


@pytest.mark.parametrize("mode, expected_line", [
    ("silent", "fake console line 30"),
    ("abort", "failed to set MSR"),
])
async def test_probe_falls_back_to_tcg(tmp_path: Path, caplog, mode: str, expected_line: str) -> None:
    caplog.set_level(logging.INFO)
    backend = _fake_backend(tmp_path, mode, probe_timeout_s=1.0)
    await backend.prepare()
    assert backend.accelerator == "tcg"

    [launch] = _launches(tmp_path)
    assert _pid_gone(launch["pid"]), "the probe's QEMU still runs"
    assert not (tmp_path / "logs" / "kvm-probe.log").exists()
    # The console's last lines are in the provisioner's log, and no more.
    assert "microVM kvm-probe did not report within 1 s or QEMU failed" in caplog.text
    assert expected_line in caplog.text
    assert "fake console line 5\n" not in caplog.text
    await backend.close()


async def test_probe_needs_kvm_device(tmp_path: Path) -> None:
    backend = _fake_backend(tmp_path, "probe-ok", kvm_device=tmp_path / "no-kvm")
    await backend.prepare()
    assert backend.accelerator == "tcg"
    assert _launches(tmp_path) == []
    await backend.close()


async def test_probe_console_kept_on_request(tmp_path: Path) -> None:
    backend = _fake_backend(tmp_path, "abort", keep_console_logs=True)
    await backend.prepare()
    assert backend.accelerator == "tcg"
    assert "failed to set MSR" in (tmp_path / "logs" / "kvm-probe.log").read_text()
    await backend.close()


async def _started(backend: MicroVMBackend, holder_id: str, wait_for_key: bool) -> None:
    await backend.start(HolderSpec(holder_id, "127.0.0.1:9", "fake"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = backend.status(holder_id)
        if (bool(status.public_key) if wait_for_key else not status.alive):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the fake VM of {holder_id} did not {'report a key' if wait_for_key else 'exit'} in 60 s")


async def test_stop_deletes_console_of_clean_vm(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    backend = _fake_backend(tmp_path, "holder", accelerator="tcg")
    await _started(backend, "holder-fake", wait_for_key=True)
    console = backend.log_path("holder-fake")
    assert "fake console line 1" in console.read_text()

    await backend.stop("holder-fake")
    assert not console.exists()
    assert "microVM holder-fake" not in caplog.text, "a clean stop must not copy the console into the log"
    assert list((tmp_path / "logs").iterdir()) == []


async def test_stop_logs_console_of_failed_vm(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    backend = _fake_backend(tmp_path, "crash", accelerator="tcg")
    await _started(backend, "holder-fake", wait_for_key=False)
    console = backend.log_path("holder-fake")

    await backend.stop("holder-fake")
    assert not console.exists()
    [record] = [r for r in caplog.records if r.getMessage().startswith("microVM holder-fake")]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "exited before it was asked to stop" in message
    tail_lines = [line for line in message.splitlines() if "fake console line" in line]
    assert len(tail_lines) == TAIL_LINES
    assert tail_lines[0].endswith("fake console line 11")
    assert tail_lines[-1].endswith("fake console line 30")


async def test_stop_keeps_console_on_request(tmp_path: Path) -> None:
    backend = _fake_backend(tmp_path, "holder", accelerator="tcg", keep_console_logs=True)
    await _started(backend, "holder-fake", wait_for_key=True)
    await backend.stop("holder-fake")
    assert "holder stopped and wiped its fragments" in (tmp_path / "logs" / "holder-fake.log").read_text()


def test_adopt_deletes_console_of_gone_vm(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    backend = MicroVMBackend(tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    console = tmp_path / "logs" / "holder-gone.log"
    console.write_text("holder holder-gone is consuming its topic\n")

    assert backend.adopt("holder-gone", 0, b"key", "x25519") is None
    assert not console.exists()
    assert "microVM holder-gone ended while no provisioner watched it" in caplog.text
    assert "holder holder-gone is consuming its topic" in caplog.text


def test_console_tail_reads_only_the_end(tmp_path: Path) -> None:
    console = tmp_path / "holder-big.log"
    console.write_text("".join(f"boot message {number:05d} " + "x" * 80 + "\n" for number in range(10_000)))
    tail = console_tail(console)
    assert len(tail) == TAIL_LINES
    assert tail[-1].startswith("boot message 09999 ")
    assert tail[0].startswith("boot message 09980 ")

    # A line that starts before the bytes read is incomplete, so it is left out.
    console.write_text("A" * 10_000 + "\nlast line\n")
    assert console_tail(console) == ["last line"]


def test_console_tail_neutralizes_control_characters(tmp_path: Path) -> None:
    console = tmp_path / "holder-escape.log"
    console.write_bytes(b"plain\r\n\x1b[2K\x1b[1Aforged line\r\n\r\n\xff\xfe not utf-8\n")
    assert console_tail(console) == ["plain", "?[2K?[1Aforged line", "\ufffd\ufffd not utf-8"]
    assert console_tail(tmp_path / "missing.log") == []
