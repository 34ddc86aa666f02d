"""Command line of the development stack: up, down, status and env."""

from __future__ import annotations

import argparse
import shlex
import sys

from shardbus.devstack.config import load_config
from shardbus.devstack.errors import StackError
from shardbus.devstack.stack import down, log_to_stderr, status, up

_EPILOG = """\
environment:
  SHARDBUS_STACK_DIR            state folder (default ~/.local/state/shardbus/stack)
  XDG_CACHE_HOME                the Kafka jars go to $XDG_CACHE_HOME/shardbus (default ~/.cache)
  SHARDBUS_KAFKA_VERSION        Kafka release fetched from Maven Central (default 4.1.1)
  SHARDBUS_KAFKA_PORT           broker port of the single node (default 19092)
  SHARDBUS_KAFKA_CONTROLLER_PORT  controller port of the single node (default 19093)
  SHARDBUS_KAFKA_CLUSTER_PORTS  broker ports of the 3 cluster nodes, each controller
                                on port + 1 (default 19192,19292,19392)
  SHARDBUS_REDIS_PORT           Redis port (default 16379)
  SHARDBUS_KAFKA_FORMAT_TIMEOUT  seconds that formatting a node's storage may take (default 120)
  SHARDBUS_KAFKA_START_TIMEOUT  seconds to wait for Kafka (default 60, cluster 120)
  SHARDBUS_REDIS_START_TIMEOUT  seconds to wait for Redis (default 10)
  SHARDBUS_STACK_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL on down (default 30)

with --tls (mutual TLS, Kafka ACLs, Redis ACL users on a Unix socket):
  SHARDBUS_TLS_STACK_DIR        state folder (default ~/.local/state/shardbus/stack-tls)
  SHARDBUS_TLS_KAFKA_PORT       broker port (default 19592)
  SHARDBUS_TLS_KAFKA_CONTROLLER_PORT  controller port (default 19593)
  SHARDBUS_TLS_DIR              the CA and certificates (default $SHARDBUS_TLS_STACK_DIR/tls);
                                point it at a deployment's tls folder to share its CA
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/stack",
        description="Run a local Kafka broker (KRaft) and Redis server for shardbus.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=["up", "down", "status", "env"],
        help="up: start and wait until ready; down: stop; status: report; env: print exports",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="use the 3-node Kafka cluster instead of the single node "
        "(with down: stop only the cluster)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="use the TLS stack (its own folder and ports) instead of the plaintext one",
    )
    args = parser.parse_args(argv)

    try:
        if args.tls and args.cluster:
            raise StackError("--tls and --cluster cannot be combined: the TLS stack has a single node")
        config = load_config(tls=args.tls)
        if args.command == "up":
            exports = up(config, cluster=args.cluster)
            _print_exports(exports)
            flag = ""
            if args.cluster:
                flag = " --cluster"
            elif args.tls:
                flag = " --tls"
            log_to_stderr("stop it with: scripts/stack down" + flag)
        elif args.command == "down":
            down(config, cluster_only=args.cluster)
        elif args.command == "status":
            return 0 if status(config, cluster=args.cluster) else 1
        else:
            _print_exports(config.exports(args.cluster))
    except StackError as error:
        print(f"stack: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _print_exports(exports: dict[str, str]) -> None:
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    sys.exit(main())
