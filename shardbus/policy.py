"""The policy file: which application may use which secret, and how.

The authorizer loads one YAML file at start-up::

    version: 1
    max_request_age_s: 30        # older requests are rejected as stale
    apps:
      billing:
        verify_key: "ed25519:<base64 of the 32-byte raw public key>"
        grants:
          - secrets: ["db/*", "stripe/api-key"]
            operations: [lease]
            lease_ttl_s: 30

Secret patterns use shell-style wildcards (`fnmatch`), and `*` also matches
`/`, so `db/*` grants `db/password` and `db/replica/password` alike.
Everything not granted is denied.
"""

from __future__ import annotations

import fnmatch
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import ConfigError, DecodeError

POLICY_VERSION = 1
OPERATIONS = frozenset({"lease"})
_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_LEASE_TTL_S = 30
MAX_LEASE_TTL_S = 3600


@dataclass(frozen=True)
class Grant:
    """Permission to run some operations on the secrets matching some patterns."""

    secrets: tuple[str, ...]
    operations: frozenset[str]
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S

    def matches(self, secret_name: str, operation: str) -> bool:
        if operation not in self.operations:
            return False
        return any(fnmatch.fnmatchcase(secret_name, pattern) for pattern in self.secrets)


@dataclass(frozen=True)
class AppPolicy:
    """One registered application: its request-signing key and its grants."""

    app_id: str
    verify_key: VerifyKey = field(repr=False)
    grants: tuple[Grant, ...]

    def grant_for(self, secret_name: str, operation: str) -> Grant | None:
        """Return the first grant allowing `operation` on `secret_name`, or None."""
        for grant in self.grants:
            if grant.matches(secret_name, operation):
                return grant
        return None


@dataclass(frozen=True)
class Policy:
    """The whole policy file, parsed and checked."""

    apps: dict[str, AppPolicy]
    max_request_age_s: int = 30

    def app(self, app_id: str) -> AppPolicy | None:
        return self.apps.get(app_id)


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file; raise ConfigError naming the bad entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
    try:
        stream = io.StringIO(text)
        stream.name = str(path)  # so YAML errors name the file, not "<unicode string>"
        document = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from None
    return parse_policy(document, source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a mapping with the same key twice.

    Plain YAML keeps the last value, so a second `apps:` at the end of a
    file would silently replace every app registered above it.
    """


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; each key may appear once", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_policy(document: Any, *, source: str = "policy") -> Policy:
    """Check a policy document already parsed from YAML or built in code."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(document).__name__}")
    version = document.get("version")
    if version != POLICY_VERSION:
        raise ConfigError(f"{source}: version must be {POLICY_VERSION}, got {version!r}")
    unknown = set(document) - {"version", "apps", "max_request_age_s"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")

    max_age = document.get("max_request_age_s", 30)
    _require_int(max_age, f"{source}: max_request_age_s", 1, 3600)

    apps_doc = document.get("apps") or {}
    if not isinstance(apps_doc, dict):
        raise ConfigError(f"{source}: apps must be a mapping of app id to settings")
    apps = {}
    for app_id, app_doc in apps_doc.items():
        apps[app_id] = _parse_app(app_id, app_doc, source)
    return Policy(apps=apps, max_request_age_s=max_age)


def _parse_app(app_id: Any, app_doc: Any, source: str) -> AppPolicy:
    where = f"{source}: apps.{app_id}"
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        raise ConfigError(f"{where}: app id must match [A-Za-z0-9._-]{{1,64}}")
    if not isinstance(app_doc, dict):
        raise ConfigError(f"{where}: expected a mapping with verify_key and grants")
    unknown = set(app_doc) - {"verify_key", "grants"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")

    verify_key = _parse_verify_key(app_doc.get("verify_key"), where)
    grants_doc = app_doc.get("grants") or []
    if not isinstance(grants_doc, list):
        raise ConfigError(f"{where}.grants: expected a list")
    grants = tuple(_parse_grant(g, f"{where}.grants[{i}]") for i, g in enumerate(grants_doc))
    return AppPolicy(app_id=app_id, verify_key=verify_key, grants=grants)


def _parse_verify_key(value: Any, where: str) -> VerifyKey:
    try:
        return VerifyKey.from_text(value)
    except DecodeError as exc:
        raise ConfigError(
            f"{where}.verify_key: {exc}; 'shardbus app add' prints a valid key"
        ) from None


def _parse_grant(doc: Any, where: str) -> Grant:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping with secrets and operations")
    unknown = set(doc) - {"secrets", "operations", "lease_ttl_s"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    secrets = doc.get("secrets")
    if not isinstance(secrets, list) or not secrets or not all(isinstance(s, str) and s for s in secrets):
        raise ConfigError(f"{where}.secrets: expected a non-empty list of secret name patterns")
    operations = doc.get("operations", ["lease"])
    if not isinstance(operations, list) or not operations:
        raise ConfigError(f"{where}.operations: expected a non-empty list")
    for operation in operations:
        if operation not in OPERATIONS:
            raise ConfigError(
                f"{where}.operations: unknown operation {operation!r}, expected one of {sorted(OPERATIONS)}"
            )
    ttl = doc.get("lease_ttl_s", DEFAULT_LEASE_TTL_S)
    _require_int(ttl, f"{where}.lease_ttl_s", 1, MAX_LEASE_TTL_S)
    return Grant(secrets=tuple(secrets), operations=frozenset(operations), lease_ttl_s=ttl)


def _require_int(value: Any, where: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected an integer from {low} to {high}, got {value!r}")
