"""The guest image: kernel extraction, module order, the cpio archive, the initramfs."""

from __future__ import annotations

import fcntl
import gzip
import lzma
import struct
from pathlib import Path

import pytest

from provisioner.microvm_image import (
    INIT_SCRIPT,
    build_initramfs,
    extract_vmlinux,
    guest_image,
    install_kernel,
    newc_archive,
    remove_stale_initramfs,
    resolve_modules,
)

_KERNEL = b"\x7fELF" + bytes(range(256)) * 64


def _bzimage(payload: bytes, setup_sectors: int = 2) -> bytes:
    """Return a minimal bzImage: boot header, setup sectors, then the payload at offset 0x40."""
    image = bytearray((setup_sectors + 1) * 512 + 0x40)
    image[0x1F1] = setup_sectors
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, 0x40, len(payload))
    return bytes(image) + payload + b"\x00" * 16


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def _read_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse a newc archive into {name: (mode, content)}, stopping at the trailer."""
    entries = {}
    offset = 0
    while True:
        assert archive[offset:offset + 6] == b"070701"
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = archive[name_start:name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        data = archive[data_start:data_start + size]
        offset = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data)


def _module(name: str, depends: str) -> bytes:
    return b"\x7fELF junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00name=" + name.encode() + b"\x00"


def test_vmlinux_from_xz_payload() -> None:
    assert extract_vmlinux(_bzimage(_xz(_KERNEL))) == _KERNEL


def test_vmlinux_from_gzip_payload() -> None:
    assert extract_vmlinux(_bzimage(gzip.compress(_KERNEL), setup_sectors=4)) == _KERNEL


def test_vmlinux_rejects_non_bzimage() -> None:
    with pytest.raises(ValueError, match="HdrS"):
        extract_vmlinux(b"\x00" * 4096)


def test_vmlinux_rejects_unknown_compression() -> None:
    with pytest.raises(ValueError, match="expected xz or gzip"):
        extract_vmlinux(_bzimage(b"\x28\xb5\x2f\xfd" + b"\x00" * 64))


def test_vmlinux_rejects_non_elf_payload() -> None:
    with pytest.raises(ValueError, match="not an ELF"):
        extract_vmlinux(_bzimage(_xz(b"not a kernel")))


def _module_tree(root: Path) -> Path:
    modules = root / "lib" / "modules" / "6.1.0-test"
    files = {
        "kernel/drivers/virtio/virtio.ko": _module("virtio", ""),
        "kernel/drivers/virtio/virtio_ring.ko": _module("virtio_ring", ""),
        "kernel/drivers/virtio/virtio_mmio.ko": _module("virtio_mmio", "virtio,virtio_ring"),
        "kernel/drivers/net/virtio_net.ko": _module("virtio_net", "net_failover,virtio,virtio_ring"),
        "kernel/drivers/net/net_failover.ko": _module("net_failover", "failover"),
        "kernel/net/core/failover.ko": _module("failover", ""),
        "kernel/drivers/char/virtio_console.ko": _module("virtio_console", "virtio,virtio_ring"),
        "kernel/drivers/char/hw_random/virtio-rng.ko": _module("virtio_rng", "virtio,virtio_ring,rng_core"),
        "kernel/net/9p/9pnet.ko": _module("9pnet", ""),
        "kernel/net/9p/9pnet_virtio.ko": _module("9pnet_virtio", "9pnet,virtio,virtio_ring"),
        "kernel/fs/9p/9p.ko": _module("9p", "9pnet,netfs"),
        "kernel/fs/netfs/netfs.ko": _module("netfs", ""),
        "kernel/drivers/block/unused.ko": _module("unused", ""),
    }
    for name, data in files.items():
        (modules / name).parent.mkdir(parents=True, exist_ok=True)
        (modules / name).write_bytes(data)
    (modules / "modules.builtin").write_text("kernel/drivers/char/hw_random/rng-core.ko\n")
    return modules


def test_modules_in_dependency_order(tmp_path: Path) -> None:
    order = [path.name for path in resolve_modules(_module_tree(tmp_path))]
    assert "unused.ko" not in order
    assert len(order) == len(set(order))
    for before, after in [("virtio.ko", "virtio_mmio.ko"), ("virtio_ring.ko", "virtio_mmio.ko"),
                          ("failover.ko", "net_failover.ko"), ("net_failover.ko", "virtio_net.ko"),
                          ("9pnet.ko", "9pnet_virtio.ko"), ("netfs.ko", "9p.ko")]:
        assert order.index(before) < order.index(after), f"{before} must load before {after}"
    assert "virtio-rng.ko" in order


def test_missing_wanted_module_rejected(tmp_path: Path) -> None:
    modules = _module_tree(tmp_path)
    (modules / "kernel/fs/9p/9p.ko").unlink()
    with pytest.raises(ValueError, match="kernel module 9p was not found"):
        resolve_modules(modules)


def test_newc_archive_round_trip() -> None:
    entries = [("bin", 0o040755, b""), ("bin/tool", 0o100755, b"abc"), ("link", 0o120777, b"bin/tool")]
    archive = newc_archive(entries)
    assert len(archive) % 512 == 0
    assert _read_newc(archive) == {name: (mode, data) for name, mode, data in entries}
    assert newc_archive(entries) == archive


def _static_busybox() -> bytes:
    """Return a 64-bit ELF header with one PT_LOAD program header and no PT_INTERP."""
    header = bytearray(0x40 + 0x38)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 0x40)
    struct.pack_into("<HH", header, 0x36, 0x38, 1)
    struct.pack_into("<I", header, 0x40, 1)
    return bytes(header)


def _install(cache: Path, tmp_path: Path) -> None:
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(_bzimage(_xz(_KERNEL)))
    install_kernel(vmlinuz, _module_tree(tmp_path), cache)
    (cache / "busybox").write_bytes(_static_busybox())


def test_initramfs_contents(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    entries = _read_newc(build_initramfs(cache))

    assert entries["init"] == (0o100755, INIT_SCRIPT.read_bytes())
    assert entries["bin/busybox"][1] == _static_busybox()
    assert entries["lib64"] == (0o120777, b"usr/lib64")
    order = entries["modules/modules.load"][1].decode().split()
    assert order == [path.name for path in resolve_modules(_module_tree(tmp_path))]
    for name in order:
        assert f"modules/{name}" in entries


def test_initramfs_rejects_dynamic_busybox(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    dynamic = bytearray(_static_busybox())
    struct.pack_into("<I", dynamic, 0x40, 3)  # PT_INTERP
    (cache / "busybox").write_bytes(bytes(dynamic))
    with pytest.raises(ValueError, match="not a statically linked"):
        build_initramfs(cache)


def test_guest_image_names_missing_setup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scripts/microvm-setup"):
        guest_image(tmp_path / "empty", runtime_dir=tmp_path / "run")


def test_guest_image_reuses_initramfs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    first = guest_image(cache, runtime_dir=cache)
    second = guest_image(cache, runtime_dir=cache)
    assert first == second
    assert first.kernel.read_bytes() == _KERNEL
    assert [p.name for p in cache.glob("initramfs-*.cpio")] == [first.initramfs.name]
    first.release()
    second.release()


def test_guest_image_removes_stale_initramfs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    old_init = tmp_path / "old-init.sh"
    old_init.write_text("#!/bin/sh\necho an older init\n")
    stale = cache / f"initramfs-{'0' * 16}.cpio"
    stale.write_bytes(build_initramfs(cache, old_init))
    unrelated = cache / "initramfs-notes.txt"
    unrelated.write_text("not an initramfs")

    image = guest_image(cache, runtime_dir=cache)
    assert not stale.exists()
    assert [p.name for p in cache.glob("initramfs-*.cpio")] == [image.initramfs.name]
    assert unrelated.exists()
    image.release()


def test_initramfs_in_use_not_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    in_use = cache / f"initramfs-{'1' * 16}.cpio"
    in_use.write_bytes(b"an initramfs that another backend boots")
    with open(in_use, "rb") as other_backend:
        fcntl.flock(other_backend, fcntl.LOCK_SH)
        image = guest_image(cache, runtime_dir=cache)
        assert in_use.exists()

    # Once the other backend releases it, the next build removes it.
    second = guest_image(cache, runtime_dir=cache)
    assert not in_use.exists()
    image.release()
    second.release()


def test_stale_removal_spares_held_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _install(cache, tmp_path)
    image = guest_image(cache, runtime_dir=cache)
    newer = cache / f"initramfs-{'2' * 16}.cpio"
    newer.write_bytes(b"the initramfs of a newer init script")

    # A backend with the newer init must not delete the file this one still boots.
    assert remove_stale_initramfs(cache, keep=newer) == []
    assert image.initramfs.exists()
    image.release()
    assert remove_stale_initramfs(cache, keep=newer) == [image.initramfs]
    assert not image.initramfs.exists()
