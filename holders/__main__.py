"""Run one holder: ``python -m holders --holder-id ID``.

The provisioner starts holders this way. Kafka bootstrap and topic prefix
come from SHARDBUS_KAFKA_BOOTSTRAP and SHARDBUS_TOPIC_PREFIX (see
``shardbus.config``). The holder hardens its process before it makes its key
pair, and stops on SIGTERM or SIGINT after wiping what it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys

from holders.hardening import HOLDER_DATA_BYTES, HOLDER_FILE_BYTES, ResourceLimits, harden
from holders.runtime import DEFAULT_HEARTBEAT_INTERVAL_S

_HOLDER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MIB = 1024 * 1024


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holders", description="Run one shardbus holder.")
    parser.add_argument("--holder-id", required=True, help="this holder's id (1-64 of A-Z a-z 0-9 . _ -)")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=DEFAULT_HEARTBEAT_INTERVAL_S, metavar="SECONDS",
        help=f"seconds between heartbeats (default {DEFAULT_HEARTBEAT_INTERVAL_S:g})",
    )
    parser.add_argument("--kem", default="x25519", choices=["x25519", "mlkem768-x25519"],
                        help="HPKE KEM of the holder's key pair (default x25519)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit with SIGTERM when this process, the provisioner, exits")
    parser.add_argument("--key-fd", type=int, default=None,
                        help="file descriptor to write '<kem> <public key hex>' to once, then close; "
                        "the provisioner reads it to tell genuine heartbeats from forged ones")
    parser.add_argument("--max-data", type=int, default=HOLDER_DATA_BYTES // _MIB, metavar="MIB",
                        help="the holder's RLIMIT_DATA, the private writable memory it may use, in MiB "
                        f"(default {HOLDER_DATA_BYTES // _MIB})")
    parser.add_argument("--max-file-size", type=int, default=HOLDER_FILE_BYTES // _MIB, metavar="MIB",
                        help="the holder's RLIMIT_FSIZE, the largest file it may write, its log included, "
                        f"in MiB (default {HOLDER_FILE_BYTES // _MIB})")
    args = parser.parse_args(argv)
    if not _HOLDER_ID.fullmatch(args.holder_id):
        parser.error(f"--holder-id {args.holder_id!r} is invalid: use 1-64 of A-Z a-z 0-9 . _ -")
    if args.heartbeat_interval <= 0:
        parser.error(f"--heartbeat-interval must be positive, got {args.heartbeat_interval}")
    for option, value in (("--max-data", args.max_data), ("--max-file-size", args.max_file_size)):
        if value <= 0:
            parser.error(f"{option} must be a positive number of MiB, got {value}")
    args.limits = ResourceLimits(data_bytes=args.max_data * _MIB, file_bytes=args.max_file_size * _MIB)
    return args


def _announce_public_key(fd: int, kem: str, public_key: bytes) -> None:
    line = f"{kem} {public_key.hex()}\n".encode("ascii")
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(line)
    except OSError as exc:
        # Without the key the provisioner ignores every heartbeat, and the
        # holder is reported as failed after its ready timeout.
        logging.getLogger("holders").error("could not write the public key to fd %d: %s", fd, exc)


async def _run(args: argparse.Namespace) -> None:
    # Imported after hardening so that no key material exists before it.
    from holders.handlers import CommandHandler
    from holders.runtime import HolderService
    from schemas.topics import Topics
    from shardbus.config import Settings
    from shardbus.crypto import envelope

    settings = Settings.from_env()
    keypair = envelope.EnvelopeKeyPair.generate(args.kem)
    if args.key_fd is not None:
        _announce_public_key(args.key_fd, keypair.kem, keypair.public_bytes())
    handler = CommandHandler(args.holder_id, keypair)
    service = HolderService(
        handler,
        settings.kafka_bootstrap,
        Topics(settings.topic_prefix),
        heartbeat_interval_s=args.heartbeat_interval,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.stop)
    await service.run()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s holder {args.holder_id} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    report = harden(args.parent_pid, args.limits)
    logging.getLogger("holders").info("hardening applied: %s", ", ".join(report.applied) or "none")
    try:
        asyncio.run(_run(args))
    except Exception:
        logging.getLogger("holders").exception("holder %s failed", args.holder_id)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
