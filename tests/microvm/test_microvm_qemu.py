"""The QEMU command line of a microVM holder and the host facts behind it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from provisioner.backend import HolderTls
from provisioner.microvm import tls_message
from provisioner.microvm_host import (
    HOST_MIB_PER_VM,
    MAX_DEFAULT_POOL,
    POOL_MEMORY_SHARE,
    default_pool_size,
    find_qemu_pid,
    find_relay_pids,
)
from provisioner.microvm_qemu import (
    MAX_COMMAND_LINE,
    BrokerForward,
    GuestSettings,
    broker_forwards,
    host_shares,
    kernel_command_line,
    qemu_command,
    tsc_khz,
)
from shardbus.cli import secret_commands


def _settings(**changes) -> GuestSettings:
    values = dict(
        name="holder-abc", kernel=Path("/cache/kernel/vmlinux"), initramfs=Path("/cache/initramfs-1.cpio"),
        accelerator="tcg", memory_mib=160, shares=("/usr", "/opt/python"),
        forwards=tuple(broker_forwards("127.0.0.1:19092,kafka.example:9093")),
        relay_program=Path("/cache/busybox"), env_program=Path("/usr/bin/env"), console_log=Path("/logs/holder-abc.log"), control_fd=7,
        init_words=("shardbus.holder_id=holder-abc",), tsc_khz=2_600_000,
    )
    values.update(changes)
    return GuestSettings(**values)


def _option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == flag]


def test_forwards_keep_ip_addresses() -> None:
    assert broker_forwards("127.0.0.1:19092, 192.0.2.7:9092") == [
        BrokerForward("127.0.0.1", 19092, "127.0.0.1", "10.0.2.100"),
        BrokerForward("192.0.2.7", 9092, "192.0.2.7", "10.0.2.101"),
    ]


def test_forwards_map_host_names_to_loopback() -> None:
    first, second = broker_forwards("localhost:19092,kafka.example:9093")
    assert first.guest_host == "127.0.0.1"
    assert second == BrokerForward("kafka.example", 9093, "127.0.1.2", "10.0.2.101")


@pytest.mark.parametrize("bootstrap, message", [
    ("", "empty"),
    ("127.0.0.1", "expected host:port"),
    ("127.0.0.1:0", "expected host:port"),
    ("[::1]:9092", "IPv6"),
    ("127.0.0.1:9092,127.0.0.2:9092", "repeats a port"),
])
def test_forwards_reject_invalid_bootstrap(bootstrap: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        broker_forwards(bootstrap)


def test_command_line_carries_settings() -> None:
    words = kernel_command_line(_settings()).split()
    assert "tsc_early_khz=2600000" in words
    assert "shardbus.share=share0:/usr" in words
    assert "shardbus.share=share1:/opt/python" in words
    assert "shardbus.forward=127.0.0.1:19092:10.0.2.100" in words
    assert "shardbus.host=kafka.example:127.0.1.2" in words
    assert "shardbus.forward=127.0.1.2:9093:10.0.2.101" in words
    assert words[-1] == "shardbus.holder_id=holder-abc"


def test_command_line_without_tsc_under_kvm() -> None:
    assert "tsc_early_khz" not in kernel_command_line(_settings(accelerator="kvm"))


def test_command_line_rejects_whitespace() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        kernel_command_line(_settings(init_words=("shardbus.prefix=a b",)))


def test_command_line_length_limit() -> None:
    shares = tuple(f"/very/long/share/path/number/{n:04d}" for n in range(MAX_COMMAND_LINE // 40))
    with pytest.raises(ValueError, match="kernel command line has"):
        kernel_command_line(_settings(shares=shares))


def test_qemu_command_isolates_guest() -> None:
    command = qemu_command("/usr/bin/qemu-system-x86_64", _settings())
    assert command[0] == "/usr/bin/qemu-system-x86_64"
    assert _option(command, "-name") == ["shardbus-holder-abc"]
    assert "dump-guest-core=off" in _option(command, "-machine")[0]
    assert _option(command, "-accel") == ["tcg,tb-size=64"]
    assert _option(command, "-m") == ["160"]
    assert "-no-reboot" in command
    assert "-nodefaults" in command
    [netdev] = _option(command, "-netdev")
    assert "restrict=on" in netdev.split(",")
    relay = "/usr/bin/env SHARDBUS_RELAY_FOR=holder-abc /cache/busybox nc"
    assert f"guestfwd=tcp:10.0.2.100:19092-cmd:{relay} 127.0.0.1 19092" in netdev.split(",")
    assert f"guestfwd=tcp:10.0.2.101:9093-cmd:{relay} kafka.example 9093" in netdev.split(",")
    assert _option(command, "-fsdev") == [
        "local,id=share0,path=/usr,security_model=none,readonly=on",
        "local,id=share1,path=/opt/python,security_model=none,readonly=on",
    ]
    assert "socket,id=control,fd=7" in _option(command, "-chardev")
    assert "virtserialport,chardev=control,name=shardbus.control" in _option(command, "-device")


def test_qemu_command_under_kvm() -> None:
    command = qemu_command("qemu-system-x86_64", _settings(accelerator="kvm"))
    assert _option(command, "-accel") == ["kvm"]
    assert _option(command, "-cpu") == ["host"]


def test_qemu_command_escapes_commas() -> None:
    command = qemu_command("qemu", _settings(console_log=Path("/logs/a,b.log")))
    assert "file,id=console,path=/logs/a,,b.log,append=on" in _option(command, "-chardev")


def test_shares_cover_this_interpreter() -> None:
    shares = host_shares(sys.executable, str(Path(__file__).resolve().parents[2]))
    assert "/usr" in shares
    for outer in shares:
        nested = [inner for inner in shares if inner != outer and inner.startswith(outer + "/")]
        assert nested == [], f"{nested} lie inside the share {outer}"
    prefix = Path(sys.base_prefix).resolve()
    assert any(prefix == Path(share) or Path(share) in prefix.parents for share in shares)


def test_default_pool_size_follows_memory() -> None:
    assert default_pool_size(0) == 1
    assert default_pool_size(8 * HOST_MIB_PER_VM * 2) == 2
    assert default_pool_size(1024 * 1024) == MAX_DEFAULT_POOL


def test_default_pool_covers_default_put() -> None:
    parser = argparse.ArgumentParser()
    secret_commands.register(parser.add_subparsers())
    default_put = parser.parse_args(["secret", "put", "db/password"])
    assert MAX_DEFAULT_POOL >= default_put.fragments
    # The host memory at which the pool covers a default request.
    assert default_pool_size(POOL_MEMORY_SHARE * HOST_MIB_PER_VM * default_put.fragments) >= default_put.fragments


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu MHz\t\t: 2596.138
flags\t\t: fpu vme tsc constant_tsc nonstop_tsc
processor\t: 1
cpu MHz\t\t: 1400.000
flags\t\t: fpu vme tsc constant_tsc nonstop_tsc
"""


@pytest.mark.parametrize("sysfs, cpuinfo, expected", [
    ("2593906\n", _CPUINFO, 2_593_906),
    (None, _CPUINFO, 2_596_138),
    ("0\n", _CPUINFO, 2_596_138),
    ("not a number\n", _CPUINFO, 2_596_138),
    (None, _CPUINFO.replace(" constant_tsc", ""), None),
    (None, _CPUINFO.replace("2596.138", "fast"), None),
    (None, _CPUINFO.replace("2596.138", "nan"), None),
    (None, "processor\t: 0\n", None),
    (None, None, None),
    ("2593906\n", None, 2_593_906),
], ids=["sysfs", "cpuinfo", "sysfs-zero", "sysfs-garbage", "no-constant-tsc", "mhz-garbage", "mhz-nan",
        "no-mhz", "no-files", "sysfs-only"])
def test_tsc_khz_sources(tmp_path: Path, sysfs: str | None, cpuinfo: str | None, expected: int | None) -> None:
    sysfs_file = tmp_path / "tsc_freq_khz"
    cpuinfo_file = tmp_path / "cpuinfo"
    if sysfs is not None:
        sysfs_file.write_text(sysfs)
    if cpuinfo is not None:
        cpuinfo_file.write_text(cpuinfo)
    assert tsc_khz(sysfs_file, cpuinfo_file) == expected


def test_no_qemu_for_unknown_holder() -> None:
    assert find_qemu_pid("holder-that-never-ran") is None
    assert find_relay_pids("holder-that-never-ran") == []


def test_tls_message_layout() -> None:
    message = tls_message(HolderTls(ca_pem=b"CA\n", certificate_pem=b"CERT\n", key_pem=b"KEY-PEM\n"))
    header, _, body = message.partition(b"\n")
    assert header == b"tls 3 5 8"
    assert body == b"CA\nCERT\nKEY-PEM\n"
