"""The master key, its file format, and the keys derived from it.

Every other symmetric key in shardbus is derived from the master key with
HKDF-SHA256 (RFC 5869, no salt, 32-byte output). The HKDF info starts with
a label naming the key's purpose and continues with the ids the key is for,
length-prefixed (see `encoding`). The master key's version is always the
last field, so every derived key is bound to one master key version.

Master key file format, one line of ASCII::

    shardbus-master-key v1 <version> <base64 of 32 bytes>

The same line is accepted in the SHARDBUS_MASTER_KEY environment variable.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shardbus.crypto.encoding import encode_fields
from shardbus.errors import ConfigError

KEY_LENGTH = 32
MAX_VERSION = 2**63 - 1
ENV_VAR = "SHARDBUS_MASTER_KEY"

_MAGIC = "shardbus-master-key"
_FORMAT = "v1"
# A valid key file is about 90 bytes, so anything much larger is not one.
_MAX_FILE_SIZE = 4096

_FRAGMENT_LABEL = "shardbus/v1/fragment"
_MAPPING_LABEL = "shardbus/v1/mapping"
_VERIFY_LABEL = "shardbus/v1/verify"
_AUDIT_LABEL = "shardbus/v1/audit"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")


class MasterKey:
    """A 32-byte master key and its version.

    The key bytes never appear in `repr`, and equality is compared in
    constant time.
    """

    __slots__ = ("_material", "_version")

    def __init__(self, material: bytes, version: int) -> None:
        if not isinstance(material, (bytes, bytearray)) or len(material) != KEY_LENGTH:
            raise ValueError(f"master key material must be {KEY_LENGTH} bytes")
        _check_int("master key version", version, 0, MAX_VERSION)
        self._material = bytes(material)
        self._version = version

    @property
    def material(self) -> bytes:
        """The 32 key bytes."""
        return self._material

    @property
    def version(self) -> int:
        """The key version, stored with every fragment sealed under a derived key."""
        return self._version

    def __repr__(self) -> str:
        return f"MasterKey(version={self._version})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        same_material = hmac.compare_digest(self._material, other._material)
        return same_material and self._version == other._version

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def generate(
        cls, version: int = 1, *, randbytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> MasterKey:
        """Return a new random master key with the given version."""
        return cls(randbytes(KEY_LENGTH), version)

    # -- text and file format -------------------------------------------------

    def to_text(self) -> str:
        """Return the one-line text form, newline included."""
        encoded = base64.b64encode(self._material).decode("ascii")
        return f"{_MAGIC} {_FORMAT} {self._version} {encoded}\n"

    @classmethod
    def from_text(cls, text: str, *, source: str = "master key text") -> MasterKey:
        """Parse the one-line text form; `source` names the file or variable in errors.

        Error messages never repeat the text, because it may contain the key.
        """
        parts = text.strip().split(" ")
        if len(parts) != 4:
            raise ConfigError(
                f"{source}: expected one line '{_MAGIC} {_FORMAT} <version> <base64 key>', "
                f"got {len(parts)} space-separated fields"
            )
        magic, file_format, version_text, encoded = parts
        if magic != _MAGIC:
            raise ConfigError(f"{source}: does not start with '{_MAGIC}'; is this a shardbus master key?")
        if file_format != _FORMAT:
            raise ConfigError(
                f"{source}: unsupported format {file_format[:16]!r}, expected '{_FORMAT}'; "
                "the key was written by another shardbus release"
            )
        if not version_text.isascii() or not version_text.isdigit() or len(version_text) > 19:
            raise ConfigError(f"{source}: the version must be a decimal integer in 0..{MAX_VERSION}")
        version = int(version_text)
        if version > MAX_VERSION:
            raise ConfigError(f"{source}: the version must be in 0..{MAX_VERSION}, got {version}")
        try:
            material = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{source}: the key is not valid base64") from None
        if len(material) != KEY_LENGTH:
            raise ConfigError(f"{source}: the key must be {KEY_LENGTH} bytes, got {len(material)}")
        return cls(material, version)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a master key file, rejecting one that group or others can access.

        The mode is checked on the opened file descriptor, so a file swapped
        after the check cannot slip through.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError(f"master key file {path} not found; check the path") from None
        except PermissionError:
            raise ConfigError(f"master key file {path} is not readable by this user") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise ConfigError(f"master key file {path} is not a regular file")
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"master key file {path} has mode {mode:04o}, so group or others can access it; "
                    f"run 'chmod 600 {path}' and check who may have read it"
                )
            data = b""
            while len(data) <= _MAX_FILE_SIZE:
                chunk = os.read(fd, _MAX_FILE_SIZE + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        if len(data) > _MAX_FILE_SIZE:
            raise ConfigError(f"master key file {path} is larger than {_MAX_FILE_SIZE} bytes; is it a key file?")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ConfigError(f"master key file {path} is not ASCII text") from None
        return cls.from_text(text, source=f"master key file {path}")

    @classmethod
    def from_env(cls, var: str = ENV_VAR, *, environ: Mapping[str, str] | None = None) -> MasterKey:
        """Read a master key from the environment variable `var`, in the file format."""
        environ = os.environ if environ is None else environ
        text = environ.get(var)
        if text is None:
            raise ConfigError(f"environment variable {var} is not set; set it to the master key line")
        return cls.from_text(text, source=f"environment variable {var}")

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key to `path` as a mode 0600 file, atomically.

        The key goes to a temporary file in the same directory (mkstemp
        creates it with mode 0600), which is flushed to disk and then linked
        to `path`. So readers see either no file or the whole key. Unless
        `overwrite` is true, an existing file is left alone and
        FileExistsError is raised, because replacing a master key makes
        every fragment sealed under it unreadable.
        """
        path = Path(path)
        directory = path.parent
        fd, temporary = tempfile.mkstemp(prefix=".master-key-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(self.to_text().encode("ascii"))
                file.flush()
                os.fsync(file.fileno())
            if overwrite:
                os.replace(temporary, path)
            else:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise FileExistsError(
                        errno.EEXIST,
                        "master key file already exists; pass overwrite=True only if no fragment "
                        "is sealed under the old key",
                        str(path),
                    ) from None
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    # -- derived keys ---------------------------------------------------------

    def _derive(self, *info_fields: str | int) -> bytes:
        info = encode_fields(*info_fields, self._version)
        return HKDF(algorithm=hashes.SHA256(), length=KEY_LENGTH, salt=None, info=info).derive(self._material)

    def fragment_key(self, secret_id: str, secret_version: int, index: int, holder_id: str) -> bytes:
        """Return the key that seals fragment `index` of a secret version for one holder."""
        _check_id("secret_id", secret_id)
        _check_int("secret_version", secret_version, 0, MAX_VERSION)
        _check_int("index", index, 1, 255)
        _check_id("holder_id", holder_id)
        return self._derive(_FRAGMENT_LABEL, secret_id, secret_version, index, holder_id)

    def mapping_key(self) -> bytes:
        """Return the key that seals the mapping table."""
        return self._derive(_MAPPING_LABEL)

    def verify_key(self, secret_id: str, secret_version: int) -> bytes:
        """Return the HMAC key for the fragment commitments and digest of a secret version."""
        _check_id("secret_id", secret_id)
        _check_int("secret_version", secret_version, 0, MAX_VERSION)
        return self._derive(_VERIFY_LABEL, secret_id, secret_version)

    def audit_key(self) -> bytes:
        """Return the HMAC key for audit records."""
        return self._derive(_AUDIT_LABEL)
