"""The deployment folder: keys and the policy file of one shardbus deployment.

`shardbus init` creates it::

    master.key          the master key (0600); only the controlling domain
                        and the authorizer read it
    reassembler.key     the reassembler's HPKE private key (0600)
    reassembler.pub     its public key, which the authorizer hands to holders
    audit.key           the Ed25519 key that signs audit records (0600, PEM)
    audit.pub           its public key (PEM), all an auditor needs to verify
    policy.yaml         which app may lease which secret
    apps/<app>.key      an app's Ed25519 signing key (0600), made by
                        `shardbus app add` for apps that have no key of their own

Key files are one line of text: ``shardbus-hpke-key v1 <kem> <base64>``
(and ``shardbus-hpke-public`` for the public half).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

import yaml

from shardbus.crypto import envelope
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import SigningKey
from shardbus.errors import ConfigError
from shardbus.policy import MAX_LEASE_TTL_S, POLICY_VERSION, parse_policy

_PRIVATE_MAGIC = "shardbus-hpke-key"
_PUBLIC_MAGIC = "shardbus-hpke-public"
_FORMAT = "v1"
_APP_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def init_deployment(home: Path, *, kem: str = "x25519") -> list[Path]:
    """Create the deployment folder's keys and an empty policy; return what was made.

    Existing files are kept, so running it twice is harmless.
    """
    _refuse_partial(home)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    made = []
    master_path = home / "master.key"
    if not master_path.exists():
        MasterKey.generate().write(master_path)
        made.append(master_path)
    private_path, public_path = home / "reassembler.key", home / "reassembler.pub"
    if not private_path.exists():
        key_pair = envelope.EnvelopeKeyPair.generate(kem)
        _write_private(private_path, f"{_PRIVATE_MAGIC} {_FORMAT} {kem} {_b64(key_pair.private_bytes())}\n")
        public_path.write_text(f"{_PUBLIC_MAGIC} {_FORMAT} {kem} {_b64(key_pair.public_bytes())}\n")
        made += [private_path, public_path]
    audit_path, audit_public_path = home / "audit.key", home / "audit.pub"
    if not audit_path.exists():
        audit_key = SigningKey.generate()
        _write_private(audit_path, audit_key.to_pem().decode("ascii"))
        audit_public_path.write_bytes(audit_key.verify_key.to_pem())
        made += [audit_path, audit_public_path]
    policy_path = home / "policy.yaml"
    if not policy_path.exists():
        policy_path.write_text(yaml.safe_dump({"version": POLICY_VERSION, "max_request_age_s": 30, "apps": {}}))
        made.append(policy_path)
    return made


#: Keys that nothing can replace: a new master key opens none of the stored
#: secrets, and a new audit key makes the existing audit records unverifiable.
_IRREPLACEABLE = ("master.key", "audit.key")
_DEPLOYMENT_FILES = ("master.key", "reassembler.key", "reassembler.pub", "audit.key", "audit.pub", "policy.yaml")


def _refuse_partial(home: Path) -> None:
    """Raise ConfigError when `home` contains a deployment that lost an irreplaceable key."""
    present = [name for name in _DEPLOYMENT_FILES if (home / name).exists()]
    missing = [name for name in _IRREPLACEABLE if name not in present]
    if present and missing:
        raise ConfigError(
            f"{home} contains a deployment ({', '.join(present)}) but {' and '.join(missing)} is missing. "
            "A new key would not open the secrets or verify the audit records stored with the old one, so "
            "init creates none: restore the file from your backup, or move the folder away to start over"
        )


def load_reassembler_key(path: Path) -> envelope.EnvelopeKeyPair:
    """Read the reassembler's private key file."""
    kem, raw = _read_key_line(path, _PRIVATE_MAGIC)
    return envelope.EnvelopeKeyPair.from_private_bytes(kem, raw)


def load_reassembler_public(path: Path) -> envelope.PublicKey:
    """Read the reassembler's public key file."""
    kem, raw = _read_key_line(path, _PUBLIC_MAGIC)
    return envelope.PublicKey.from_bytes(kem, raw)


def app_key_path(home: Path, app_id: str) -> Path:
    """Return the signing key file of a registered app; raise ConfigError for a bad id or a missing file."""
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id) or set(app_id) == {"."}:
        raise ConfigError(f"invalid app id {app_id!r}: use 1 to 64 of A-Z a-z 0-9 . _ -, e.g. billing")
    path = home / "apps" / f"{app_id}.key"
    if not path.exists():
        raise ConfigError(f"app {app_id!r} has no signing key at {path}; register it with "
                          f"'shardbus app add {app_id} --grant PATTERN', check SHARDBUS_HOME, or pass --key")
    return path


def add_app(home: Path, app_id: str, grants: list[str], *, lease_ttl_s: int = 30) -> Path:
    """Register an app in the policy file with a new signing key; return the key file.

    Raises ConfigError when the app is already registered.
    """
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        raise ConfigError(f"invalid app id {app_id!r}: use 1 to 64 of A-Z a-z 0-9 . _ -, e.g. billing")
    if isinstance(lease_ttl_s, bool) or not 1 <= lease_ttl_s <= MAX_LEASE_TTL_S:
        raise ConfigError(f"invalid --lease-ttl {lease_ttl_s}: use 1 to {MAX_LEASE_TTL_S} seconds")
    policy_path = home / "policy.yaml"
    document = _read_policy_document(policy_path)
    apps = document.setdefault("apps", {}) or {}
    document["apps"] = apps
    if app_id in apps:
        raise ConfigError(f"app {app_id!r} is already in {policy_path}; edit its grants there")
    signing_key = SigningKey.generate()
    apps[app_id] = {
        "verify_key": signing_key.verify_key.to_text(),
        "grants": [{"secrets": grants, "operations": ["lease"], "lease_ttl_s": lease_ttl_s}],
    }
    parse_policy(document, source=str(policy_path))  # refuse to write a policy the authorizer would reject
    key_path = home / "apps" / f"{app_id}.key"
    key_path.parent.mkdir(mode=0o700, exist_ok=True)
    _write_private(key_path, signing_key.to_pem().decode("ascii"))
    policy_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return key_path


def load_signing_key(path: Path) -> SigningKey:
    """Read an app's PEM signing key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        return SigningKey.from_pem(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_policy_document(path: Path) -> dict:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}; run 'shardbus init' first") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"policy file {path} must hold a mapping")
    return document


def _read_key_line(path: Path, magic: str) -> tuple[str, bytes]:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}; run 'shardbus init' first") from None
    parts = text.split()
    if len(parts) != 4 or parts[0] != magic or parts[1] != _FORMAT:
        raise ConfigError(f"{path}: expected one line '{magic} {_FORMAT} <kem> <base64>'")
    try:
        raw = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}: the key is not valid base64") from None
    return parts[2], raw


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
