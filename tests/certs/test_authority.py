"""The deployment CA: what its certificates contain and how it refuses bad input."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shardbus.certs.authority import CertificateAuthority
from shardbus.certs.folder import TlsFolder
from shardbus.certs.principals import check_principal
from shardbus.errors import ConfigError

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def fixed_clock() -> datetime.datetime:
    return NOW


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.generate("test CA", clock=fixed_clock)


def test_issued_certificate_names_principal(authority):
    identity = authority.issue("shardbus.app.billing", clock=fixed_clock)
    certificate = identity.certificate

    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "shardbus.app.billing"
    # Kafka maps the RFC 2253 form, which must start with the CN.
    assert certificate.subject.rfc4514_string().startswith("CN=shardbus.app.billing,")
    assert certificate.issuer == authority.certificate.subject


def test_issued_certificate_allows_client_and_server(authority):
    certificate = authority.issue("broker", hosts=("127.0.0.1", "localhost"), clock=fixed_clock).certificate

    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_validity_follows_clock(authority):
    identity = authority.issue("holder", validity=datetime.timedelta(hours=4), clock=fixed_clock)

    assert identity.not_valid_after == NOW + datetime.timedelta(hours=4)
    assert identity.certificate.not_valid_before_utc < NOW


def test_validity_capped_by_ca(authority):
    identity = authority.issue("long", validity=datetime.timedelta(days=100_000), clock=fixed_clock)

    assert identity.not_valid_after == authority.certificate.not_valid_after_utc


def test_certificate_verifies_against_ca(authority, tmp_path):
    identity = authority.issue("checked", hosts=("127.0.0.1",))
    (tmp_path / "ca.pem").write_bytes(authority.certificate_pem)
    (tmp_path / "leaf.pem").write_bytes(identity.certificate_pem)
    (tmp_path / "leaf.key").write_bytes(identity.key_pem)

    # Loading the chain into an ssl context checks that key and certificate match.
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(str(tmp_path / "leaf.pem"), str(tmp_path / "leaf.key"))
    identity.certificate.verify_directly_issued_by(authority.certificate)


def test_serial_numbers_differ(authority):
    first = authority.issue("a").certificate.serial_number
    second = authority.issue("a").certificate.serial_number

    assert first != second
    assert 0 < first < 2**159


@pytest.mark.parametrize("principal", ["", "CN=x", "a,b", "a b", "x" * 65, "ümlaut", "a;b"])
def test_bad_principal_rejected(principal):
    with pytest.raises(ValueError, match="principal"):
        check_principal(principal)


def test_non_positive_validity_rejected(authority):
    with pytest.raises(ValueError, match="validity must be positive"):
        authority.issue("x", validity=datetime.timedelta(0))


def test_identity_repr_hides_key(authority):
    identity = authority.issue("x")

    assert "PRIVATE" not in repr(identity)
    assert "key_pem" not in repr(identity)


def test_ca_from_pem_rejects_foreign_key(authority):
    other = CertificateAuthority.generate("other")

    with pytest.raises(ConfigError, match="does not belong"):
        CertificateAuthority.from_pem(authority.certificate_pem, other.key_pem())


def test_ca_from_pem_rejects_leaf(authority):
    leaf = authority.issue("leaf")

    with pytest.raises(ConfigError, match="not a CA certificate"):
        CertificateAuthority.from_pem(leaf.certificate_pem, leaf.key_pem)


def test_folder_writes_private_keys(tmp_path):
    folder = TlsFolder(tmp_path / "tls")
    authority, created = folder.create_ca()
    files, issued = folder.ensure_identity(authority, "shardbus.authorizer")

    assert created and issued
    assert stat.S_IMODE(folder.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.ca_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.environment()["SHARDBUS_KAFKA_TLS_CERT"] == str(tmp_path / "tls" / "shardbus.authorizer.pem")


def test_folder_keeps_existing(tmp_path):
    folder = TlsFolder(tmp_path / "tls")
    authority, _ = folder.create_ca()
    folder.ensure_identity(authority, "broker")
    before = folder.certificate_path("broker").read_bytes()

    again, created = folder.create_ca()
    _, issued = folder.ensure_identity(again, "broker")

    assert not created and not issued
    assert folder.certificate_path("broker").read_bytes() == before
    assert again.certificate == authority.certificate


def test_folder_rejects_readable_ca_key(tmp_path):
    folder = TlsFolder(tmp_path / "tls")
    folder.create_ca()
    folder.ca_key_path.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        folder.load_ca()


def test_folder_without_ca_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="shardbus certs init"):
        TlsFolder(tmp_path / "none").load_ca()
