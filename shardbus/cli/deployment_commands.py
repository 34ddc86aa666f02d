"""`shardbus init` and `shardbus app add`."""

from __future__ import annotations

import argparse

from schemas.topics import Topics
from shardbus import deployment
from shardbus.config import Settings
from shardbus.kafka import ensure_topics


def register(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="create a deployment folder with keys and an empty policy")
    init.add_argument("--kem", choices=["x25519", "mlkem768-x25519"], default="x25519",
                      help="KEM of the reassembler's HPKE key (default: x25519)")
    init.set_defaults(handler=_init)

    app = commands.add_parser("app", help="manage applications in the policy file")
    app_commands = app.add_subparsers(dest="app_command", required=True, metavar="ACTION")
    add = app_commands.add_parser("add", help="register an app with a new signing key and grants")
    add.add_argument("app_id", help="the app's id, 1-64 of A-Z a-z 0-9 . _ -")
    add.add_argument("--grant", action="append", required=True, metavar="PATTERN",
                     help="secret name pattern the app may lease, e.g. 'db/*' (repeatable)")
    add.add_argument("--lease-ttl", type=int, default=30, metavar="SECONDS",
                     help="how long a lease lasts, in seconds (default: 30)")
    add.set_defaults(handler=_app_add)


def _init(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    made = deployment.init_deployment(settings.home, kem=args.kem)
    for path in made:
        print(f"created {path}")
    if not made:
        print(f"{settings.home} already holds a deployment; nothing changed")
    return 0


async def _app_add(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    key_path = deployment.add_app(settings.home, args.app_id, args.grant, lease_ttl_s=args.lease_ttl)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings.kafka_bootstrap, [topics.replies(args.app_id)])
    print(f"registered app {args.app_id}; its signing key is in {key_path}")
    print("restart the authorizer to load the new policy")
    return 0
