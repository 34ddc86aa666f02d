"""A small X.509 certificate authority for one shardbus deployment.

Every certificate it issues names one Kafka principal in its subject's
common name (CN), and the broker maps the CN to the principal with
``ssl.principal.mapping.rules`` (see ``principals.PRINCIPAL_MAPPING_RULE``). Keys are
ECDSA P-256, which Kafka's PEM key stores (KIP-651), Python's ``ssl`` module
and OpenSSL all accept.

Every leaf certificate is valid for both TLS client and server
authentication, because a Kafka broker is both: it serves clients and
connects to the KRaft controller, which requests its certificate.

Time and serial numbers are injectable so tests can issue certificates
that expired, or are not valid yet, at a chosen instant.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shardbus.certs.principals import check_principal
from shardbus.errors import ConfigError

#: Organization name written into every subject, so an operator can tell
#: shardbus certificates apart from others signed by a shared CA.
ORGANIZATION = "shardbus"

DEFAULT_CA_VALIDITY = datetime.timedelta(days=3650)
DEFAULT_VALIDITY = datetime.timedelta(days=365)
# Clocks of different hosts disagree a little, so a certificate is valid
# from shortly before the moment it was issued.
_BACKDATE = datetime.timedelta(minutes=5)

Clock = Callable[[], datetime.datetime]
RandomBits = Callable[[int], bytes]


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, both PEM, for one principal."""

    principal: str
    certificate_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    @property
    def not_valid_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc


class CertificateAuthority:
    """A CA certificate and its key, which issue identities.

    Create a new one with `generate`, or load one with `from_pem`.
    """

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"the CA key must be an EC private key, got {type(key).__name__}")
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise ConfigError(f"certificate {certificate.subject.rfc4514_string()} is not a CA certificate")
        self.certificate = certificate
        self._key = key

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def generate(
        cls,
        name: str,
        *,
        validity: datetime.timedelta = DEFAULT_CA_VALIDITY,
        clock: Clock = _utc_now,
        randbits: RandomBits = secrets.token_bytes,
    ) -> CertificateAuthority:
        """Create a self-signed CA whose subject CN is `name`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock()
        subject = _name(name)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial(randbits))
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            # path_length=0: this CA signs leaf certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def from_pem(cls, certificate_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """Load a CA from its PEM certificate and unencrypted PEM key; raise ConfigError if invalid."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise ConfigError(f"the CA certificate or key is not valid PEM: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the CA key must be an EC key, got {type(key).__name__}")
        if key.public_key().public_numbers() != certificate.public_key().public_numbers():
            raise ConfigError("the CA key does not belong to the CA certificate")
        return cls(certificate, key)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the CA's private key as unencrypted PKCS#8 PEM, for writing to a 0600 file."""
        return _key_pem(self._key)

    def issue(
        self,
        principal: str,
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
        hosts: Sequence[str] = (),
        clock: Clock = _utc_now,
        randbits: RandomBits = secrets.token_bytes,
    ) -> Identity:
        """Issue a certificate whose CN is `principal`, with a new key pair.

        `hosts` are DNS names or IP addresses written as subject alternative
        names, which a TLS client checks against the address it connected
        to. Only a certificate that serves connections (the broker's) needs
        them. The certificate is not valid after the CA's own expiry.
        """
        check_principal(principal)
        if validity <= datetime.timedelta(0):
            raise ValueError(f"validity must be positive, got {validity}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock()
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(principal))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(_serial(randbits))
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]),
                                            critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return Identity(principal, certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _name(common_name: str) -> x509.Name:
    # The CN comes first in the RFC 2253 form that Kafka maps, because that
    # form lists the relative distinguished names in reverse order.
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _serial(randbits: RandomBits) -> int:
    # RFC 5280 allows at most 20 octets and requires a positive number, so
    # the top bit of 159 random bits is cleared.
    return int.from_bytes(randbits(20), "big") >> 1 or 1


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
