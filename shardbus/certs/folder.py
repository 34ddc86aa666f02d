"""The TLS folder of a deployment: the CA and one identity per principal.

Layout (the folder is mode 0700, every ``.key`` file 0600)::

    ca.pem                  the CA certificate, which every party trusts
    ca.key                  the CA's private key: only `shardbus certs` and
                            the provisioner (which issues holder
                            certificates) read it
    <principal>.pem         a certificate whose CN is the principal
    <principal>.key         its private key

Principals are named by ``shardbus.certs.principals``; for example
``broker``, ``admin``, ``shardbus.authorizer`` or ``shardbus.app.billing``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from shardbus.certs.authority import CertificateAuthority, Identity, check_principal
from shardbus.errors import ConfigError

CA_NAME = "shardbus deployment CA"


@dataclass(frozen=True)
class IdentityFiles:
    """The paths of one principal's certificate and key, and of the CA to trust."""

    principal: str
    ca: Path
    certificate: Path
    key: Path

    def environment(self) -> dict[str, str]:
        """Return the variables that `shardbus.kafka.client_options` reads for this identity."""
        return {
            "SHARDBUS_KAFKA_TLS_CA": str(self.ca),
            "SHARDBUS_KAFKA_TLS_CERT": str(self.certificate),
            "SHARDBUS_KAFKA_TLS_KEY": str(self.key),
        }


class TlsFolder:
    """Reads and writes the files of one TLS folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"TlsFolder({str(self.path)!r})"

    @property
    def ca_certificate_path(self) -> Path:
        return self.path / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.path / "ca.key"

    def certificate_path(self, principal: str) -> Path:
        return self.path / f"{check_principal(principal)}.pem"

    def key_path(self, principal: str) -> Path:
        return self.path / f"{check_principal(principal)}.key"

    def files(self, principal: str) -> IdentityFiles:
        return IdentityFiles(principal, self.ca_certificate_path, self.certificate_path(principal),
                             self.key_path(principal))

    def has_ca(self) -> bool:
        return self.ca_certificate_path.exists()

    def has(self, principal: str) -> bool:
        return self.certificate_path(principal).exists() and self.key_path(principal).exists()

    def create_ca(self, **issue_options) -> tuple[CertificateAuthority, bool]:
        """Return the folder's CA, creating it first if the folder has none.

        The flag is True when the CA was created now.
        """
        if self.has_ca():
            return self.load_ca(), False
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        authority = CertificateAuthority.generate(CA_NAME, **issue_options)
        # The key goes first: a certificate without its key would make the
        # next run believe the CA exists.
        _write(self.ca_key_path, authority.key_pem(), private=True)
        _write(self.ca_certificate_path, authority.certificate_pem, private=False)
        return authority, True

    def load_ca(self) -> CertificateAuthority:
        try:
            certificate_pem = self.ca_certificate_path.read_bytes()
            key_pem = self.ca_key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the CA in {self.path}: {exc.strerror} ({exc.filename}); "
                "run 'shardbus certs init' first"
            ) from None
        _check_private(self.ca_key_path)
        return CertificateAuthority.from_pem(certificate_pem, key_pem)

    def load_ca_certificate(self) -> bytes:
        try:
            return self.ca_certificate_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.ca_certificate_path}: {exc.strerror}; "
                              "run 'shardbus certs init' first") from None

    def write_identity(self, identity: Identity) -> IdentityFiles:
        """Write an identity's key (0600) and certificate, replacing older ones."""
        files = self.files(identity.principal)
        _write(files.key, identity.key_pem, private=True, replace=True)
        _write(files.certificate, identity.certificate_pem, private=False, replace=True)
        return files

    def ensure_identity(
        self,
        authority: CertificateAuthority,
        principal: str,
        *,
        hosts: tuple[str, ...] = (),
        validity: datetime.timedelta | None = None,
    ) -> tuple[IdentityFiles, bool]:
        """Issue and write `principal`'s identity unless the folder has it; the flag says whether it was issued."""
        if self.has(principal):
            return self.files(principal), False
        options = {} if validity is None else {"validity": validity}
        return self.write_identity(authority.issue(principal, hosts=hosts, **options)), True


def _write(path: Path, data: bytes, *, private: bool, replace: bool = False) -> None:
    mode = 0o600 if private else 0o644
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as handle:
        # O_CREAT applies the mode only to a new file, so an old file that
        # was readable by others is narrowed here too.
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} has mode {mode:04o}, so other users may read it; run 'chmod 600 {path}'")
