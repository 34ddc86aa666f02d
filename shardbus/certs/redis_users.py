"""Redis ACL users, one per service role, limited to the keys that role uses.

Used with the TLS development stack, whose Redis listens only on a Unix
socket (mode 0700) and has the ``default`` user disabled. Each role gets
read and write access (``~``) to its own keys and read-only access
(``%R~``) to what it only looks up. Holders and applications never talk to
Redis, so they get no user.

| Keys | authorizer | reassembler | provisioner | controller |
|---|---|---|---|---|
| ``{p}:secret:*`` (mapping table records) | read, write | - | - | read, write |
| ``{p}:secrets`` (mapping table index) | read | - | - | read, write |
| ``{p}:backup:*`` (sealed fragments) | read | - | - | read, write |
| ``{p}:seen:*``, ``{p}:pending*`` | read, write | - | - | - |
| ``{p}:replied:*`` (reply claims) | read, write | read, write | - | - |
| ``{p}:op:*``, ``{p}:deadlines`` | - | read, write | - | - |
| ``{p}:lease:*``, ``{p}:leases`` (issued leases) | read, write | read, write | - | - |
| ``{p}:holder:*``, ``{p}:holders:*`` (registry) | read | - | read, write | - |

The authorizer writes mapping table records because its holder repair moves
a fragment's placement to a replacement holder. The reassembler records each
lease it issues and ends it on expiry; the authorizer ends it on a release.

Each role may run every command except those in the ``@admin`` and
``@dangerous`` categories (CONFIG, ACL, FLUSHALL, KEYS, ...), and no Pub/Sub
channel.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from shardbus.certs import principals
from shardbus.errors import ConfigError, ServiceUnavailable

#: Roles with a Redis user; holders and applications have none.
REDIS_ROLES = ("authorizer", "reassembler", "provisioner", "controller")

_COMMANDS = ("+@all", "-@admin", "-@dangerous")


@dataclass(frozen=True)
class KeyAccess:
    """Read-write and read-only key patterns of one role."""

    read_write: tuple[str, ...]
    read_only: tuple[str, ...] = ()

    def rules(self) -> list[str]:
        return [f"~{pattern}" for pattern in self.read_write] + [f"%R~{pattern}" for pattern in self.read_only]


def key_access(prefix: str, role: str) -> KeyAccess:
    """Return the key patterns of `role` under the Redis key prefix `prefix`."""
    mapping = (f"{prefix}:secret:*", f"{prefix}:secrets", f"{prefix}:backup:*")
    registry = (f"{prefix}:holder:*", f"{prefix}:holders:*")
    replies = (f"{prefix}:replied:*",)
    leases = (f"{prefix}:lease:*", f"{prefix}:leases")
    if role == "authorizer":
        own = (f"{prefix}:seen:*", f"{prefix}:pending:*", f"{prefix}:pending-deadlines", f"{prefix}:secret:*")
        return KeyAccess(own + replies + leases, (f"{prefix}:secrets", f"{prefix}:backup:*") + registry)
    if role == "reassembler":
        return KeyAccess((f"{prefix}:op:*", f"{prefix}:deadlines") + replies + leases)
    if role == "provisioner":
        return KeyAccess(registry)
    if role == "controller":
        return KeyAccess(mapping)
    raise ValueError(f"role must be one of {', '.join(REDIS_ROLES)}, got {role!r}")


def role_url(admin_url: str, user: str, password: str) -> str:
    """Return `admin_url` with its user name and password replaced by a role's."""
    parts = urllib.parse.urlsplit(admin_url)
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def url_file(tls_dir: Path, principal: str) -> Path:
    """Return the file (mode 0600) that keeps a role's Redis URL, password included."""
    return Path(tls_dir) / f"{principals.check_principal(principal)}.redis-url"


def apply_users(admin_url: str, prefix: str, tls_dir: Path, *, redis_prefix: str | None = None) -> dict[str, Path]:
    """Create or update the Redis user of every role; return each role's URL file.

    A role that has a URL file keeps its password, so services already
    running stay connected. Raises ServiceUnavailable when Redis refuses.
    """
    key_prefix = redis_prefix or prefix
    made: dict[str, Path] = {}
    client = Redis.from_url(admin_url)
    try:
        for role in REDIS_ROLES:
            user = principals.service_principal(prefix, role)
            path = url_file(tls_dir, user)
            password = _stored_password(path) or secrets.token_urlsafe(32)
            rules = ["reset", "on", f">{password}", "resetchannels", *key_access(key_prefix, role).rules(), *_COMMANDS]
            client.execute_command("ACL", "SETUSER", user, *rules)
            _write_private(path, role_url(admin_url, user, password) + "\n")
            made[role] = path
        try:
            client.execute_command("ACL", "SAVE")
        except ResponseError:
            # Redis without an ACL file keeps the users until it restarts.
            pass
    except RedisError as exc:
        raise ServiceUnavailable(f"creating the Redis users failed: {exc}; check SHARDBUS_REDIS_ADMIN_URL") from None
    finally:
        client.close()
    return made


def read_role_url(tls_dir: Path, principal: str) -> str:
    path = url_file(tls_dir, principal)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; run 'shardbus certs acl apply' first") from None


def _stored_password(path: Path) -> str | None:
    try:
        url = path.read_text().strip()
    except FileNotFoundError:
        return None
    password = urllib.parse.urlsplit(url).password
    return urllib.parse.unquote(password) if password else None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
