"""The QEMU command line of a microVM holder, and the host facts it depends on.

A guest gets:

- QEMU's ``microvm`` machine, one vCPU, no PCI, no disks, no firmware other
  than qboot, and ``-no-reboot`` so that the guest's reboot ends QEMU;
- the uncompressed kernel and the initramfs of ``microvm_image``;
- read-only virtio-9p shares of the host folders that the holder's Python
  needs, mounted in the guest at the same paths (``host_shares``);
- user-mode networking with ``restrict=on``, so the guest reaches nothing
  but the broker addresses that ``guestfwd`` rules relay (``broker_forwards``);
- a virtio serial port, ``shardbus.control``, connected to a socket that only
  the backend holds;
- virtio-rng fed from the host's ``/dev/urandom``, so the holder's key pair
  does not wait for the guest's entropy.

Settings reach the guest's init as ``shardbus.*`` words on the kernel
command line, so none of them may contain whitespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: The guest's address on QEMU's user-mode network, and the first address
#: used for the relays to the broker; QEMU itself uses .2 and .3.
GUEST_ADDRESS = "10.0.2.15"
_FIRST_RELAY = 100

#: Maximum length of the kernel command line on x86 (COMMAND_LINE_SIZE).
MAX_COMMAND_LINE = 2048

#: Environment variable that marks each guestfwd relay process with the
#: name of its guest. QEMU starts the relays through glib, which detaches
#: them, so they are not QEMU's children and are found by this mark instead.
RELAY_MARK = "SHARDBUS_RELAY_FOR"


@dataclass(frozen=True)
class BrokerForward:
    """One broker address made reachable in the guest.

    The guest listens on `guest_host`:`port` and relays to `relay`:`port`,
    which QEMU's guestfwd rule connects to `host`:`port` on the host.
    """

    host: str
    port: int
    guest_host: str
    relay: str


def broker_forwards(bootstrap: str) -> list[BrokerForward]:
    """Return the guest relays for each ``host:port`` of a bootstrap list.

    An IP address keeps its value in the guest. A host name maps to a
    loopback address of its own (127.0.1.N) through the guest's /etc/hosts,
    except ``localhost``. Raises ValueError for an entry without a port and
    for IPv6 addresses, which the guest's relays do not handle.

    NOTE: a guest reaches only these addresses. A broker that the cluster
    advertises but the bootstrap list omits is unreachable from the guest,
    so list every broker (``scripts/stack env --cluster`` does).
    """
    forwards: list[BrokerForward] = []
    for number, entry in enumerate(part.strip() for part in bootstrap.split(",") if part.strip()):
        host, _, port_text = entry.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"Kafka bootstrap entry {entry!r} is invalid: expected host:port")
        if ":" in host or host.startswith("["):
            raise ValueError(f"Kafka bootstrap entry {entry!r} is IPv6, which the microVM backend does not relay")
        try:
            guest_host = str(ipaddress.IPv4Address(host))
        except ValueError:
            guest_host = "127.0.0.1" if host == "localhost" else f"127.0.1.{number + 1}"
        forwards.append(BrokerForward(host, int(port_text), guest_host, f"10.0.2.{_FIRST_RELAY + number}"))
    if not forwards:
        raise ValueError("the Kafka bootstrap list is empty")
    ports = [forward.port for forward in forwards]
    if len(set(ports)) != len(ports):
        # Busybox's nc listens on every guest address, so one port serves one broker.
        raise ValueError(f"Kafka bootstrap {bootstrap!r} repeats a port, which the microVM backend cannot relay")
    return forwards


def host_shares(python: str, source_root: str) -> list[str]:
    """Return the host folders a guest needs to run `python` with the holder code.

    Those are /usr (the C library and the dynamic loader on a merged-/usr
    system), the interpreter's prefixes, every folder on its ``sys.path`` and
    `source_root`, with symbolic links followed too. A folder inside another
    one in the list is dropped, because the guest mounts the outer one.
    """
    probe = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.executable, *sys.path]))"
    output = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    prefix, base_prefix, executable, *path = json.loads(output.stdout)
    candidates = {"/usr", prefix, base_prefix, os.path.dirname(executable), source_root}
    for entry in path:
        if entry:
            candidates.add(entry if os.path.isdir(entry) else os.path.dirname(entry))
    folders: set[str] = set()
    for candidate in candidates:
        if os.path.isdir(candidate):
            folders.add(os.path.normpath(os.path.abspath(candidate)))
            folders.add(os.path.realpath(candidate))
    shares: list[str] = []
    for folder in sorted(folders):
        if folder == "/":
            raise ValueError(f"{python} needs the host's root folder, which the microVM backend does not share")
        if not any(folder == outer or folder.startswith(outer + "/") for outer in shares):
            shares.append(folder)
    for folder in shares:
        if any(character.isspace() or character in ":," for character in folder):
            raise ValueError(f"folder {folder!r} contains whitespace, ':' or ',', "
                             "which the kernel command line and QEMU's options cannot carry")
    return shares


#: The TSC frequency that some kernels publish in sysfs, and the CPU table
#: that ``tsc_khz`` falls back to.
TSC_FREQ_FILE = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
CPUINFO_FILE = Path("/proc/cpuinfo")


def tsc_khz(tsc_freq_file: Path = TSC_FREQ_FILE, cpuinfo_file: Path = CPUINFO_FILE) -> int | None:
    """Return the host's TSC frequency in kHz, or None when it is unknown.

    Under TCG the guest's TSC runs at the host's rate, and a guest kernel
    that calibrates it itself sometimes hangs, so the backend passes it as
    ``tsc_early_khz``. The value comes from `tsc_freq_file` where the
    kernel provides it. Otherwise it is the first ``cpu MHz`` of
    `cpuinfo_file`, and only on CPUs with a constant TSC.

    NOTE: on hosts that scale their CPU frequency, ``cpu MHz`` can be the
    current frequency of the core instead of the TSC rate. The guest then
    gets a wrong ``tsc_early_khz`` and its clock runs fast or slow.
    """
    try:
        khz = int(tsc_freq_file.read_text().strip())
    except (OSError, ValueError):
        khz = 0
    if khz > 0:
        return khz
    try:
        cpuinfo = cpuinfo_file.read_text()
    except OSError:
        return None
    flags = mhz = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and flags is None:
            flags = value.split()
        elif key.strip() == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                return None
    # The range check also drops "nan" and "inf", which float() accepts.
    if flags is None or mhz is None or "constant_tsc" not in flags or not 0 < mhz < 100_000:
        return None
    return round(mhz * 1000)


@dataclass(frozen=True)
class GuestSettings:
    """The settings of one guest; see ``qemu_command``."""

    name: str
    kernel: Path
    initramfs: Path
    accelerator: str  # "tcg" or "kvm"
    memory_mib: int
    shares: tuple[str, ...]
    forwards: tuple[BrokerForward, ...]
    relay_program: Path  # A static busybox on the host, run by each guestfwd rule.
    env_program: Path  # env(1), which sets RELAY_MARK for each relay.
    console_log: Path
    control_fd: int
    init_words: tuple[str, ...]  # shardbus.* words for the guest's init
    tsc_khz: int | None = None
    tcg_buffer_mib: int = 64


def kernel_command_line(settings: GuestSettings) -> str:
    """Return the guest kernel's command line; raise ValueError when it is too long."""
    words = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", "pci=off"]
    if settings.accelerator == "tcg" and settings.tsc_khz:
        words.append(f"tsc_early_khz={settings.tsc_khz}")
    for number, folder in enumerate(settings.shares):
        words.append(f"shardbus.share=share{number}:{folder}")
    for forward in settings.forwards:
        if forward.guest_host.startswith("127.0.1."):
            words.append(f"shardbus.host={forward.host}:{forward.guest_host}")
        words.append(f"shardbus.forward={forward.guest_host}:{forward.port}:{forward.relay}")
    words += settings.init_words
    for word in words:
        if not word or any(character.isspace() for character in word):
            raise ValueError(f"kernel command line word {word!r} is empty or contains whitespace")
    line = " ".join(words)
    if len(line) >= MAX_COMMAND_LINE:
        raise ValueError(f"the guest's kernel command line has {len(line)} characters, "
                         f"more than the {MAX_COMMAND_LINE - 1} that x86 accepts; share fewer folders")
    return line


def _option_value(path: Path) -> str:
    # QEMU's option parser reads ",," as a literal comma.
    return str(path).replace(",", ",,")


def qemu_command(qemu: str, settings: GuestSettings) -> list[str]:
    """Return the argument list that boots one guest."""
    if settings.accelerator == "kvm":
        accelerator, cpu = "kvm", "host"
    else:
        # TCG's translation buffer defaults to 1 GiB, most of which a holder
        # never fills, and a smaller one caps the host memory it can take.
        accelerator, cpu = f"tcg,tb-size={settings.tcg_buffer_mib}", "max"
    command = [
        qemu,
        "-name", f"shardbus-{settings.name}",
        # dump-guest-core=off keeps the guest's memory, fragments and keys
        # included, out of a core dump of QEMU; mem-merge=off keeps KSM from
        # sharing its pages with other processes.
        "-machine", "microvm,rtc=on,dump-guest-core=off,mem-merge=off",
        "-accel", accelerator,
        "-cpu", cpu,
        "-m", str(settings.memory_mib),
        "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        # A seccomp filter for QEMU. The guestfwd relays that QEMU spawns
        # inherit it, and with elevateprivileges=deny they fail to connect
        # (QEMU 7.2), so that part is left out.
        "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
        "-kernel", str(settings.kernel),
        "-initrd", str(settings.initramfs),
        "-append", kernel_command_line(settings),
        "-chardev", f"file,id=console,path={_option_value(settings.console_log)},append=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=control,fd={settings.control_fd}",
        "-device", "virtio-serial-device",
        "-device", "virtserialport,chardev=control,name=shardbus.control",
        "-object", "rng-random,id=rng,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng",
    ]
    relay = f"{settings.env_program} {RELAY_MARK}={settings.name} {settings.relay_program} nc"
    rules = [
        f"guestfwd=tcp:{forward.relay}:{forward.port}-cmd:{relay} {forward.host} {forward.port}"
        for forward in settings.forwards
    ]
    command += ["-netdev", ",".join(["user", "id=net", "restrict=on", *rules]),
                "-device", "virtio-net-device,netdev=net"]
    for number, folder in enumerate(settings.shares):
        command += [
            "-fsdev", f"local,id=share{number},path={folder},security_model=none,readonly=on",
            "-device", f"virtio-9p-device,fsdev=share{number},mount_tag=share{number}",
        ]
    return command
