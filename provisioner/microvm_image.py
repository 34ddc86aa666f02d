"""The kernel and initramfs that a microVM holder boots.

``scripts/microvm-setup`` fetches Debian's kernel and busybox-static packages
and calls ``python -m provisioner.microvm_image install`` on their unpacked
contents. That step stores, in the cache folder (``default_cache_dir()``):

- ``kernel/vmlinux``: the uncompressed kernel. QEMU's microvm machine boots
  it directly, which saves the ~3.5 s that the kernel spends decompressing
  itself under software emulation;
- ``kernel/modules/``: the few kernel modules a guest loads (virtio-mmio,
  virtio-net, virtio-console, virtio-rng, 9p), with ``modules.load`` giving
  their load order;
- ``busybox``: a static busybox for the guest's init.

The backend then builds the initramfs (``build_initramfs``) from those and
the guest init script ``microvm_init.sh``. The guest gets everything else,
Python and the holder's code, over read-only 9p shares of the host's folders.

This module uses only the standard library, so the setup script can run it
with any Python 3.11 before a virtual environment exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import lzma
import os
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

#: The modules a guest needs beyond the built-in drivers of Debian's kernel,
#: by module name. Their dependencies are added from each module's modinfo.
GUEST_MODULES = ("virtio_mmio", "virtio_net", "virtio_console", "virtio_rng", "9pnet_virtio", "9p")

# pyproject.toml lists ``*.sh`` as package data of ``provisioner``, so an
# installed package contains this script as well as a source checkout does.
INIT_SCRIPT = Path(__file__).with_name("microvm_init.sh")

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"


#: Environment variable that overrides the cache folder.
CACHE_ENV = "SHARDBUS_MICROVM_CACHE"


def default_cache_dir() -> Path:
    """Return the folder of the guest files: $SHARDBUS_MICROVM_CACHE, else ``$XDG_CACHE_HOME/shardbus/microvm``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shardbus" / "microvm"


@dataclass(frozen=True)
class GuestImage:
    """The files QEMU boots: the uncompressed kernel and the initramfs.

    While the image is in use it holds a shared lock on the initramfs, so
    that ``remove_stale_initramfs`` in another backend leaves the file in
    place. QEMU reads the initramfs when it starts, so only guests that
    have yet to start need it. Call release() when no more guests start.
    """

    kernel: Path
    initramfs: Path
    lock: BinaryIO | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        """Release the lock on the initramfs, so that a newer backend may delete it once stale."""
        if self.lock is not None:
            self.lock.close()


# -- the kernel ---------------------------------------------------------------------


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the uncompressed ELF kernel inside a bzImage (a ``vmlinuz``).

    The x86 boot header gives the offset and length of the compressed
    payload (``payload_offset`` at 0x248 and ``payload_length`` at 0x24c,
    relative to the protected-mode code after the setup sectors). Debian
    compresses it with xz; gzip is accepted too. Raises ValueError for any
    other input.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage: the boot header magic 'HdrS' is missing at offset 0x202")
    setup_sectors = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    if payload.startswith(_XZ_MAGIC):
        # The kernel's xz stream is followed by the uncompressed size, which
        # the decompressor leaves in unused_data.
        kernel = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(_GZIP_MAGIC):
        kernel = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        raise ValueError(
            f"bzImage payload starts with {payload[:6].hex()}; expected xz or gzip. "
            "Use a kernel compressed with one of them"
        )
    if not kernel.startswith(b"\x7fELF"):
        raise ValueError("the decompressed bzImage payload is not an ELF kernel")
    return kernel


def _module_name(path: Path) -> str:
    return path.name.removesuffix(".ko").replace("-", "_")


def _module_dependencies(module: bytes) -> list[str]:
    # The .modinfo section contains NUL-separated "key=value" strings, one
    # of them "depends=a,b". Nothing else in a module contains that marker.
    marker = b"\x00depends="
    at = module.find(marker)
    if at < 0:
        return []
    end = module.index(b"\x00", at + len(marker))
    value = module[at + len(marker):end].decode("ascii")
    return [name.replace("-", "_") for name in value.split(",") if name]


def resolve_modules(modules_root: Path, wanted: tuple[str, ...] = GUEST_MODULES) -> list[Path]:
    """Return the ``.ko`` files of `wanted` and their dependencies, in load order.

    `modules_root` is a kernel's ``lib/modules/<version>`` folder. Modules
    that the kernel has built in are not in the folder and need no loading,
    so a missing dependency is skipped. A missing module of `wanted` raises
    ValueError.
    """
    index = {_module_name(path): path for path in modules_root.rglob("*.ko")}
    builtin_file = modules_root / "modules.builtin"
    builtin = set()
    if builtin_file.exists():
        builtin = {_module_name(Path(line)) for line in builtin_file.read_text().split()}
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str, required: bool) -> None:
        path = index.get(name)
        if path is None:
            if required and name not in builtin:
                raise ValueError(f"kernel module {name} was not found under {modules_root}")
            return
        if path in order or name in visiting:
            return
        visiting.add(name)
        for dependency in _module_dependencies(path.read_bytes()):
            visit(dependency, False)
        order.append(path)

    for name in wanted:
        visit(name, True)
    return order


def install_kernel(vmlinuz: Path, modules_root: Path, cache_dir: Path) -> Path:
    """Store the uncompressed kernel and the guest's modules under ``cache_dir/kernel``.

    The new files are written beside the old ones and moved in place with a
    rename, so no backend reads a half-written kernel. Returns the kernel
    folder.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".kernel-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "modules").mkdir(parents=True)
    (staging / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    names = []
    for path in resolve_modules(modules_root):
        shutil.copyfile(path, staging / "modules" / path.name)
        names.append(path.name)
    (staging / "modules" / "modules.load").write_text("".join(f"{name}\n" for name in names))
    (staging / "release").write_text(modules_root.name + "\n")
    target = cache_dir / "kernel"
    retired = cache_dir / f".kernel-old-{os.getpid()}"
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


# -- the initramfs ------------------------------------------------------------------


def _newc_entry(name: str, mode: int, data: bytes, inode: int) -> bytes:
    header = "070701" + "".join(f"{value:08x}" for value in (
        inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0,
    ))
    entry = header.encode("ascii") + name.encode() + b"\x00"
    entry += b"\x00" * (-len(entry) % 4)
    entry += data + b"\x00" * (-len(data) % 4)
    return entry


def newc_archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    """Return a cpio archive in the "newc" format the kernel unpacks as an initramfs.

    Each entry is (path without a leading slash, st_mode, content); a
    symbolic link's content is its target. Owners are root and times zero,
    so the same inputs always give the same bytes.
    """
    archive = bytearray()
    for inode, (name, mode, data) in enumerate(entries, start=1):
        archive += _newc_entry(name, mode, data, inode)
    archive += _newc_entry("TRAILER!!!", 0, b"", 0)
    archive += b"\x00" * (-len(archive) % 512)
    return bytes(archive)


_DIRECTORY = 0o040755
_FILE = 0o100644
_EXECUTABLE = 0o100755
_SYMLINK = 0o120777


def _is_static_elf(data: bytes) -> bool:
    # A dynamically linked program has a PT_INTERP (type 3) program header,
    # and the guest has no loader before the host's /usr is mounted.
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for number in range(phnum):
        kind, = struct.unpack_from("<I", data, phoff + number * phentsize)
        if kind == 3:
            return False
    return True


def build_initramfs(cache_dir: Path, init_script: Path = INIT_SCRIPT) -> bytes:
    """Return the guest's initramfs: busybox, the init script and the kernel modules.

    Raises FileNotFoundError naming ``scripts/microvm-setup`` when the cache
    lacks the kernel modules or busybox, and ValueError when the busybox is
    not statically linked.
    """
    busybox_path = cache_dir / "busybox"
    modules_dir = cache_dir / "kernel" / "modules"
    for needed in (busybox_path, modules_dir / "modules.load", init_script):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing; run scripts/microvm-setup to install the microVM files")
    busybox = busybox_path.read_bytes()
    if not _is_static_elf(busybox):
        raise ValueError(f"{busybox_path} is not a statically linked x86-64 program; run scripts/microvm-setup")

    entries: list[tuple[str, int, bytes]] = [
        ("bin", _DIRECTORY, b""),
        ("bin/busybox", _EXECUTABLE, busybox),
        ("bin/sh", _SYMLINK, b"busybox"),
        ("init", _EXECUTABLE, init_script.read_bytes()),
        ("modules", _DIRECTORY, b""),
    ]
    for name in (modules_dir / "modules.load").read_text().split():
        entries.append((f"modules/{name}", _FILE, (modules_dir / name).read_bytes()))
    entries.append(("modules/modules.load", _FILE, (modules_dir / "modules.load").read_bytes()))
    # The host's /usr is mounted over 9p, and on a merged-/usr system the
    # dynamic loader is found through /lib64.
    for name in ("usr", "dev", "proc", "sys", "tmp", "etc", "run", "mnt"):
        entries.append((name, _DIRECTORY, b""))
    entries += [("lib", _SYMLINK, b"usr/lib"), ("lib64", _SYMLINK, b"usr/lib64")]
    return newc_archive(entries)


def guest_image(cache_dir: Path | None = None, *, runtime_dir: Path) -> GuestImage:
    """Build the initramfs into `runtime_dir` and return the files to boot.

    The initramfs file name carries a hash of its content, so backends that
    share `runtime_dir` reuse one file. The returned image keeps a shared
    lock on it (see ``GuestImage``), and the initramfs files of other
    contents that no backend has locked are deleted.
    """
    cache_dir = cache_dir or default_cache_dir()
    kernel = cache_dir / "kernel" / "vmlinux"
    if not kernel.exists():
        raise FileNotFoundError(f"{kernel} is missing; run scripts/microvm-setup to install the microVM files")
    archive = build_initramfs(cache_dir)
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    initramfs = runtime_dir / f"initramfs-{hashlib.sha256(archive).hexdigest()[:16]}.cpio"
    # Another backend may delete the file between the write and the lock,
    # when it took the file for a stale one, so a few attempts are allowed.
    for _ in range(_LOCK_ATTEMPTS):
        if not initramfs.exists():
            partial = initramfs.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(archive)
            partial.rename(initramfs)
        lock = _lock_shared(initramfs)
        if lock is not None:
            break
    else:
        raise OSError(f"{initramfs} was deleted each of the {_LOCK_ATTEMPTS} times it was written; "
                      f"check what else deletes files in {runtime_dir}")
    remove_stale_initramfs(runtime_dir, keep=initramfs)
    return GuestImage(kernel, initramfs, lock)


_LOCK_ATTEMPTS = 3


def _lock_shared(path: Path) -> BinaryIO | None:
    """Open `path` with a shared lock, or return None when the file is gone or was replaced meanwhile."""
    try:
        lock = open(path, "rb")  # noqa: SIM115 - the GuestImage owns it
    except FileNotFoundError:
        return None
    fcntl.flock(lock, fcntl.LOCK_SH)
    if not _still_named(lock, path):
        lock.close()
        return None
    return lock


def _still_named(file: BinaryIO, path: Path) -> bool:
    # A file deleted while we waited for its lock is no longer at `path`.
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def remove_stale_initramfs(runtime_dir: Path, keep: Path) -> list[Path]:
    """Delete the initramfs files in `runtime_dir` other than `keep` that no GuestImage holds.

    Each initramfs of an older init script or busybox would otherwise stay
    in the folder for good. A file that a running backend holds (a shared
    lock) is left for a later call. Returns the deleted files.
    """
    removed = []
    for path in sorted(runtime_dir.glob("initramfs-*.cpio")):
        if path.name == keep.name:
            continue
        # A file that cannot be opened, locked or deleted (another user's,
        # say) is left, because it keeps no backend from booting its guests.
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            continue
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Deleted under the exclusive lock, so a backend that waits
                # for its shared lock finds the file gone and writes it again.
                if _still_named(file, path):
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed


# -- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provisioner.microvm_image",
        description="Install the microVM guest kernel and busybox into the cache (run by scripts/microvm-setup).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    kernel = commands.add_parser("install-kernel", help="store the uncompressed kernel and the guest's modules")
    kernel.add_argument("--vmlinuz", type=Path, required=True, help="the packaged kernel, boot/vmlinuz-<version>")
    kernel.add_argument("--modules", type=Path, required=True, help="the kernel's lib/modules/<version> folder")
    busybox = commands.add_parser("install-busybox", help="store a static busybox")
    busybox.add_argument("--busybox", type=Path, required=True, help="a statically linked busybox program")
    for command in (kernel, busybox):
        command.add_argument("--cache", type=Path, default=default_cache_dir(),
                             help=f"cache folder (default {default_cache_dir()})")
    args = parser.parse_args(argv)

    try:
        if args.command == "install-kernel":
            folder = install_kernel(args.vmlinuz, args.modules, args.cache)
            print(f"installed the guest kernel {args.modules.name} into {folder}")
        else:
            data = args.busybox.read_bytes()
            if not _is_static_elf(data):
                raise ValueError(f"{args.busybox} is not a statically linked x86-64 program")
            args.cache.mkdir(parents=True, exist_ok=True)
            partial = args.cache / f".busybox-{os.getpid()}"
            partial.write_bytes(data)
            partial.chmod(0o755)
            partial.rename(args.cache / "busybox")
            print(f"installed busybox into {args.cache / 'busybox'}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
