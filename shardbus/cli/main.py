"""Parse the `shardbus` command line and dispatch to the subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from shardbus.errors import Denied, ServiceUnavailable, ShardbusError


def build_parser() -> argparse.ArgumentParser:
    from shardbus.cli import audit_commands, certs_commands, deployment_commands, run_command, secret_commands

    parser = argparse.ArgumentParser(
        prog="shardbus",
        description="A secrets service that never keeps a secret whole.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deployment_commands.register(commands)
    secret_commands.register(commands)
    run_command.register(commands)
    audit_commands.register(commands)
    certs_commands.register(commands)

    dev = commands.add_parser("dev", help="start or stop the local Kafka and Redis (same as scripts/stack)")
    dev.add_argument("args", nargs=argparse.REMAINDER, help="up | down | status | env [--cluster]")
    dev.set_defaults(handler=_dev)
    return parser


def _dev(args: argparse.Namespace) -> int:
    from shardbus.devstack.__main__ import main as devstack_main

    return devstack_main(args.args)


#: Exit statuses of the `shardbus` command besides 0, 1 (`secret list` or
#: `audit verify` found records it cannot open or trust) and a child's own
#: status under `shardbus run`, so that scripts can tell a denial from a typo.
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except Denied as exc:
        print(f"shardbus: denied: {exc}", file=sys.stderr)
        return EXIT_DENIED
    except ServiceUnavailable as exc:
        print(f"shardbus: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ShardbusError, ValueError) as exc:
        print(f"shardbus: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RedisConnectionError, KafkaConnectionError) as exc:
        from shardbus.config import Settings
        from shardbus.redis_health import without_credentials

        settings = Settings.from_env()
        print(
            f"shardbus: error: cannot connect ({exc}); check that Kafka at {settings.kafka_bootstrap} "
            f"and Redis at {without_credentials(settings.redis_url)} run ('scripts/stack up' starts both)",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except BrokenPipeError:
        # The reader of stdout left early, as `| head` does. Python would
        # report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
