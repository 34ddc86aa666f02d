"""`shardbus secret put | rotate | list | delete`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio import Redis

from schemas.topics import Topics
from shardbus.config import Settings
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.wipe import wipe
from shardbus.errors import ConfigError
from shardbus.sharing.fragmentation import Policy
from shardbus.store.mapping import LIFECYCLES, MappingTable
from shardbus.store.secrets import SecretStore, StoredVersion

#: Larger secrets are refused: shardbus is for keys and passwords, not files,
#: and a lease must fit in one Kafka record under the default 1 MB limit.
MAX_SECRET_BYTES = 512 * 1024


def register(commands: argparse._SubParsersAction) -> None:
    secret = commands.add_parser("secret", help="store, rotate, list and delete secrets")
    actions = secret.add_subparsers(dest="secret_command", required=True, metavar="ACTION")

    put = actions.add_parser("put", help="store a new secret, read from stdin or --file")
    put.add_argument("name", help="the secret's name, e.g. db/password")
    _add_source(put)
    put.add_argument("--fragments", type=int, default=5, metavar="N", help="number of fragments (default: 5)")
    put.add_argument("--threshold", type=int, default=3, metavar="K",
                     help="fragments needed to rebuild it (default: 3)")
    put.add_argument("--lifecycle", choices=LIFECYCLES, default="pooled",
                     help="pooled: holders keep fragments; per_operation: holders live for one request "
                          "(default: pooled)")
    put.set_defaults(handler=_put)

    rotate = actions.add_parser("rotate", help="store a new version of a secret and destroy the old one")
    rotate.add_argument("name")
    _add_source(rotate)
    rotate.set_defaults(handler=_rotate)

    listing = actions.add_parser("list", help="list stored secrets (names and policies, never values)")
    listing.set_defaults(handler=_list)

    delete = actions.add_parser("delete", help="destroy every fragment of a secret and forget it")
    delete.add_argument("name")
    delete.set_defaults(handler=_delete)


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", type=Path, metavar="PATH",
                        help="read the secret from this file instead of stdin")


def read_secret(args: argparse.Namespace) -> bytearray:
    """Read the secret from --file or stdin, never from the command line."""
    if args.file is not None:
        try:
            # Read one byte past the limit, so a huge file or /dev/zero ends
            # in the size error below instead of filling the memory.
            with open(args.file, "rb") as file:
                data = bytearray(file.read(MAX_SECRET_BYTES + 1))
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        if sys.stdin is None:
            raise ConfigError("stdin is closed; pipe the secret on stdin or give --file")
        if sys.stdin.isatty():
            print("type the secret, then Ctrl-D:", file=sys.stderr)
        data = bytearray(sys.stdin.buffer.read(MAX_SECRET_BYTES + 1))
    if len(data) > MAX_SECRET_BYTES:
        wipe(data)
        raise ConfigError(f"the secret is over {MAX_SECRET_BYTES} bytes; shardbus stores keys and passwords")
    if not data:
        raise ConfigError("the secret is empty; pipe it on stdin or give --file")
    return data


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[SecretStore]:
    from provisioner.api import request_holders

    from shardbus.audit.writer import AuditLog

    master_key = MasterKey.load(settings.master_key_path)
    topics = Topics(settings.topic_prefix)
    audit = AuditLog.from_settings(settings, "controller")
    await audit.start()
    redis = Redis.from_url(settings.redis_url)
    try:
        mapping = MappingTable(redis, master_key, prefix=settings.topic_prefix)

        async def holders_for(count: int, lifecycle: str, name: str, version: int) -> list[str]:
            granted = await request_holders(
                settings.kafka_bootstrap, topics, count=count, lifecycle=lifecycle,
                secret_name=name, secret_version=version,
            )
            return [holder.holder_id for holder in granted]

        yield SecretStore(
            bootstrap=settings.kafka_bootstrap, topics=topics, master_key=master_key,
            mapping=mapping, request_holders=holders_for, audit=audit,
        )
    finally:
        await redis.aclose()
        await audit.close()


async def _put(args: argparse.Namespace) -> int:
    try:
        policy = Policy(fragments=args.fragments, threshold=args.threshold)
    except ValueError as exc:
        raise ConfigError(f"invalid --fragments/--threshold: {exc}") from None
    secret = read_secret(args)
    try:
        async with open_store(Settings.from_env()) as store:
            stored = await store.put(args.name, bytes(secret), policy, args.lifecycle)
    finally:
        wipe(secret)
    _print_stored("stored", stored)
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    secret = read_secret(args)
    try:
        async with open_store(Settings.from_env()) as store:
            stored = await store.rotate(args.name, bytes(secret))
    finally:
        wipe(secret)
    _print_stored("rotated", stored)
    return 0


async def _list(args: argparse.Namespace) -> int:
    unreadable: list[str] = []
    settings = Settings.from_env()
    async with open_store(settings) as store:
        records = await store.list(unreadable=unreadable)
    if not records and not unreadable:
        print("no secrets stored")
        return 0
    if records:
        print(f"{'NAME':32} {'VERSION':>7} {'POLICY':>8}  LIFECYCLE")
    for record in records:
        current = record.current_version()
        policy = f"{current.threshold}-of-{current.fragments}"
        print(f"{record.name:32} {record.current:>7} {policy:>8}  {current.lifecycle}")
    if unreadable:
        # Usually the wrong key file or prefix, so the message points there
        # before it mentions deleting.
        print(
            f"shardbus: error: {len(unreadable)} mapping records under prefix {settings.topic_prefix!r} do not "
            f"open with the master key in {settings.master_key_path} (first: {unreadable[0]}). Check that "
            "SHARDBUS_HOME and SHARDBUS_TOPIC_PREFIX name the deployment that stored them and that master.key "
            "is its key. A record altered in Redis never opens; 'shardbus secret delete NAME' removes it "
            "when you know its name",
            file=sys.stderr,
        )
        return 1
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with open_store(Settings.from_env()) as store:
        unacknowledged = await store.delete(args.name)
    print(f"deleted {args.name}")
    if unacknowledged:
        print(f"holders that did not confirm (their fragments die with them): {', '.join(unacknowledged)}")
    return 0


def _print_stored(verb: str, stored: StoredVersion) -> None:
    print(
        f"{verb} {stored.name} version {stored.version}: {stored.threshold}-of-{stored.fragments}, "
        f"{stored.fragment_size} bytes per fragment, {stored.lifecycle}"
    )
    if stored.holders:
        print(f"holders: {', '.join(stored.holders)}")
