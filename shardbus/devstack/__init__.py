"""A local Kafka broker (KRaft) and Redis server for development and tests.

Run it as `scripts/stack up|down|status|env [--cluster]` or
`python3 -m shardbus.devstack ...`. It runs before the project is installed,
so it imports only the standard library (and shardbus.errors, which does the
same).

    config      settings read from SHARDBUS_* variables
    fetch       finds Java and downloads the Kafka jars with Maven, once
    kafka       server.properties, storage formatting, broker command line
    redis_server  installs redis-server when it is missing, Redis command line
    apt         apt-get as root or through sudo -n (also scripts/lib/apt-install)
    processes   pid files, command-line checks, start and stop
    probes      Kafka Metadata and Redis PING over a plain socket
    stack       up, down, status
"""

from shardbus.devstack.config import StackConfig, load_config
from shardbus.devstack.errors import StackError
from shardbus.devstack.stack import down, status, up

__all__ = ["StackConfig", "StackError", "down", "load_config", "status", "up"]
