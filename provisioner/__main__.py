"""Run the provisioner: ``python -m provisioner [--backend process|microvm] [--pool-size N]``.

Kafka, Redis, the topic prefix and the deployment folder come from the
environment (see ``shardbus.config``). The provisioner writes its audit
records with ``audit.key`` from the deployment folder. Holder logs go to ``--log-dir``, by
default ``$SHARDBUS_HOME/logs/holders``. SIGTERM or SIGINT stops the
provisioner. The holders that are ready keep running, and the next
provisioner for the prefix adopts them; ``--on-stop teardown`` (or
SHARDBUS_HOLDERS_ON_STOP=teardown) tears every holder down instead.

When SHARDBUS_KAFKA_TLS_* are set, the provisioner issues every holder it
starts a certificate of its own from the deployment CA, valid for
SHARDBUS_HOLDER_CERT_HOURS (default 4), with the ACLs of the holder role,
and deletes those ACLs when the holder ends (see ``provisioner.access``).

``--backend microvm`` runs each holder in its own QEMU microVM (see
``provisioner.microvm``; ``scripts/microvm-setup`` installs what it needs).
Its pool size and ready timeout then default to values sized for VMs.
Stopping a VM deletes its console log; ``--vm-keep-console`` (or
SHARDBUS_VM_KEEP_CONSOLE=1) keeps the logs in the log folder for debugging.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError

from provisioner.backend import HolderBackend
from provisioner.config import ProvisionerConfig

_DEFAULTS = ProvisionerConfig()

#: Environment variable with the default of --on-stop.
ON_STOP_ENV = "SHARDBUS_HOLDERS_ON_STOP"
#: Environment variable that turns --vm-keep-console on when set to 1.
KEEP_CONSOLE_ENV = "SHARDBUS_VM_KEEP_CONSOLE"

#: A microVM holder needs many seconds to boot under software emulation, and
#: more while other VMs boot beside it, so its first heartbeat may come late.
MICROVM_READY_TIMEOUT_S = 120.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m provisioner", description="Run the shardbus provisioner.")
    parser.add_argument("--backend", choices=["process", "microvm"], default="process",
                        help="run each holder as an OS process or in its own QEMU microVM (default process)")
    parser.add_argument("--pool-size", type=int, default=None,
                        help=f"ready, empty holders to keep warm (default {_DEFAULTS.pool_size}; for microVMs, "
                        "as many as fit in an eighth of the available memory at 400 MiB each, from 1 to 5)")
    parser.add_argument("--max-holders", type=int, default=_DEFAULTS.max_holders,
                        help="maximum number of running holders outside the warm pool, counting pooled holders "
                        "that keep stored fragments, so it also limits how many secrets can be stored (at 3-of-5, "
                        f"about a fifth of it); a provision request beyond it fails (default {_DEFAULTS.max_holders})")
    parser.add_argument("--heartbeat-interval", type=float, default=_DEFAULTS.heartbeat_interval_s,
                        metavar="SECONDS", help="seconds between a holder's heartbeats "
                        f"(default {_DEFAULTS.heartbeat_interval_s:g})")
    parser.add_argument("--heartbeat-timeout", type=float, default=_DEFAULTS.heartbeat_timeout_s,
                        metavar="SECONDS", help="seconds without a heartbeat before a holder is marked "
                        f"failed (default {_DEFAULTS.heartbeat_timeout_s:g})")
    parser.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                        help=f"seconds a new holder has to send its first heartbeat "
                        f"(default {_DEFAULTS.ready_timeout_s:g}; {MICROVM_READY_TIMEOUT_S:g} for microVMs)")
    parser.add_argument("--kem", default=_DEFAULTS.kem, choices=["x25519", "mlkem768-x25519"],
                        help=f"HPKE KEM of the holders' key pairs (default {_DEFAULTS.kem})")
    parser.add_argument("--orphan-timeout", type=float, default=_DEFAULTS.orphan_timeout_s, metavar="SECONDS",
                        help="seconds after which a per-operation holder whose operation never completed is "
                        f"torn down (default {_DEFAULTS.orphan_timeout_s:g})")
    parser.add_argument("--on-stop", choices=["keep", "teardown"], default=os.environ.get(ON_STOP_ENV, "keep"),
                        help="what happens to the ready holders when the provisioner stops: keep them running "
                        f"for the next provisioner to adopt, or tear them down (default from {ON_STOP_ENV}, "
                        "else keep)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="folder for holder log files (default $SHARDBUS_HOME/logs/holders)")
    parser.add_argument("--vm-memory", type=int, default=None, metavar="MIB",
                        help="guest memory of each microVM holder, in MiB (default 160)")
    parser.add_argument("--vm-accelerator", choices=["auto", "tcg", "kvm"], default="auto",
                        help="QEMU accelerator of microVM holders; auto uses KVM only when a probe guest boots "
                        "with it (default auto)")
    parser.add_argument("--vm-keep-console", action="store_true",
                        default=os.environ.get(KEEP_CONSOLE_ENV) == "1",
                        help="keep each microVM's console log in the log folder after the VM stops, for debugging; "
                        f"by default it is deleted (default from {KEEP_CONSOLE_ENV}=1, else off)")
    args = parser.parse_args(argv)
    if args.on_stop not in ("keep", "teardown"):
        parser.error(f"{ON_STOP_ENV}={args.on_stop!r} is invalid: use keep or teardown")
    microvm = args.backend == "microvm"
    if args.pool_size is None:
        if microvm:
            from provisioner.microvm_host import default_pool_size

            args.pool_size = default_pool_size()
        else:
            args.pool_size = _DEFAULTS.pool_size
    if args.ready_timeout is None:
        args.ready_timeout = MICROVM_READY_TIMEOUT_S if microvm else _DEFAULTS.ready_timeout_s
    try:
        args.config = ProvisionerConfig(
            pool_size=args.pool_size,
            max_holders=args.max_holders,
            heartbeat_interval_s=args.heartbeat_interval,
            heartbeat_timeout_s=args.heartbeat_timeout,
            ready_timeout_s=args.ready_timeout,
            kem=args.kem,
            orphan_timeout_s=args.orphan_timeout,
            teardown_on_stop=args.on_stop == "teardown",
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args


def check_log_dir(log_dir: Path) -> None:
    """Create `log_dir` if needed and write a file in it, so a bad --log-dir stops the provisioner at start-up.

    Raises ConfigError naming the folder and --log-dir. Without this check the
    provisioner would start, and every holder start would fail later.
    """
    from shardbus.errors import ConfigError

    try:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot create or write the holder log folder {log_dir} ({exc.strerror or exc}); "
            "pass --log-dir a folder the provisioner may create and write "
            "(default $SHARDBUS_HOME/logs/holders)"
        ) from None


def _backend(args: argparse.Namespace, log_dir: Path) -> HolderBackend:
    if args.backend == "microvm":
        from provisioner.microvm import DEFAULT_MEMORY_MIB, MicroVMBackend

        return MicroVMBackend(log_dir, memory_mib=args.vm_memory or DEFAULT_MEMORY_MIB,
                              accelerator=args.vm_accelerator, keep_console_logs=args.vm_keep_console)
    from provisioner.process import ProcessBackend

    return ProcessBackend(log_dir)


async def _run(args: argparse.Namespace) -> None:
    from redis.asyncio import Redis

    from provisioner.access import HolderAccess
    from provisioner.service import Provisioner
    from schemas.topics import Topics
    from shardbus.audit import AuditLog
    from shardbus.config import Settings
    from shardbus.redis_health import check_redis

    settings = Settings.from_env()
    log_dir = args.log_dir or settings.home / "logs" / "holders"
    check_log_dir(log_dir)
    await check_redis(settings.redis_url)
    audit = AuditLog.from_settings(settings, "provisioner")
    # With mutual TLS on, each holder gets a certificate and ACLs of its own.
    access = HolderAccess.from_settings(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        service = Provisioner(
            settings.kafka_bootstrap, Topics(settings.topic_prefix), _backend(args, log_dir), redis, args.config,
            access=access, audit=audit,
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop)
        await service.run()
    finally:
        await redis.aclose()
        if access is not None:
            await access.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from shardbus.errors import ShardbusError

    try:
        asyncio.run(_run(args))
    except ShardbusError as exc:
        logging.getLogger("provisioner").error("provisioner stopped: %s", exc)
        return 1
    except RedisConnectionError as exc:
        logging.getLogger("provisioner").error(
            "provisioner stopped: cannot reach Redis (%s); check SHARDBUS_REDIS_URL and that Redis runs", exc
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
