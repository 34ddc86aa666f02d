"""Readiness checks that speak the Kafka and Redis protocols over a plain socket.

The stack runs before the project and its dependencies are installed, so
these checks use only the standard library. Each one sends one small request
and reads one response. The Kafka check sends a Metadata request, whose
response lists only registered, unfenced brokers, so a broker appears in it
once it has caught up with the metadata log. The Redis check sends PING.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

# Metadata v4 (added in Kafka 1.0) is accepted by every Kafka 4.x broker, and
# it predates the flexible (tagged-field) encoding of v9, so its request and
# response are plain fixed layouts.
_METADATA_KEY = 3
_METADATA_VERSION = 4
_CLIENT_ID = b"shardbus-devstack"
_MAX_RESPONSE = 1 << 20


class ProbeError(Exception):
    """A response that is not the one the request expects."""


@dataclass(frozen=True)
class KafkaMetadata:
    """The part of a Metadata response that readiness depends on."""

    broker_ids: frozenset[int]
    cluster_id: str | None
    controller_id: int


def kafka_metadata(
    host: str, port: int, timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None
) -> KafkaMetadata:
    """Send a Metadata request for no topics and return the brokers it lists.

    With `ssl_context` the request goes over TLS, and the context's client
    certificate authenticates the probe. Raises OSError (ssl.SSLError
    included) when the connection fails and ProbeError when the response
    cannot be read.
    """
    correlation_id = 7
    header = struct.pack(">hhih", _METADATA_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID))
    # An empty topic array (count 0) requests no topics, while -1 would list all of them.
    body = struct.pack(">ib", 0, 0)
    request = header + _CLIENT_ID + body

    with _connect(host, port, timeout, ssl_context) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exactly(connection, 4))
        if not 0 < size <= _MAX_RESPONSE:
            raise ProbeError(f"Metadata response size {size} is out of range")
        response = _read_exactly(connection, size)

    reader = _Reader(response)
    if reader.int32() != correlation_id:
        raise ProbeError("Metadata response has the wrong correlation id")
    reader.int32()  # throttle_time_ms
    broker_ids = set()
    for _ in range(reader.int32()):
        broker_ids.add(reader.int32())
        reader.string()  # host
        reader.int32()  # port
        reader.string()  # rack
    cluster_id = reader.string()
    controller_id = reader.int32()
    return KafkaMetadata(frozenset(broker_ids), cluster_id, controller_id)


def redis_ping(host: str, port: int, timeout: float = 2.0) -> str:
    """Send PING and return the server's reply line without its leading '+' or '-'.

    A ready server replies PONG; one that is still loading its append-only
    file replies with a LOADING error. Raises OSError when the connection fails.
    """
    with socket.create_connection((host, port), timeout=timeout) as connection:
        return _redis_command(connection, b"PING")


def redis_ping_unix(path: Path, user: str, password: str, timeout: float = 2.0) -> str:
    """Log in as `user` over a Unix socket, send PING and return the reply as `redis_ping` does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        reply = _redis_command(connection, b"AUTH", user.encode(), password.encode())
        if reply != "OK":
            return f"AUTH failed: {reply}"
        return _redis_command(connection, b"PING")


def _redis_command(connection: socket.socket, *words: bytes) -> str:
    request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    connection.sendall(request)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = connection.recv(256)
        if not chunk:
            raise ProbeError(f"Redis closed the connection before replying to {words[0].decode()}")
        reply += chunk
        if len(reply) > 4096:
            raise ProbeError(f"Redis reply to {words[0].decode()} is too long")
    return reply.decode(errors="replace").strip().lstrip("+-")


def _connect(host: str, port: int, timeout: float, ssl_context: ssl.SSLContext | None) -> socket.socket:
    connection = socket.create_connection((host, port), timeout=timeout)
    if ssl_context is None:
        return connection
    try:
        return ssl_context.wrap_socket(connection, server_hostname=host)
    except BaseException:
        connection.close()
        raise


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ProbeError("Kafka closed the connection before the response was complete")
        data += chunk
    return bytes(data)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def _take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise ProbeError("Metadata response is shorter than its fields")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def int32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def string(self) -> str | None:
        (length,) = struct.unpack(">h", self._take(2))
        if length < 0:
            return None
        return self._take(length).decode(errors="replace")
