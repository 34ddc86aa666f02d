"""Holder certificates: who they name, how long they last, and where the holder finds them."""

from __future__ import annotations

import datetime
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from provisioner.access import HolderAccess
from provisioner.backend import HolderSpec
from provisioner.process import ProcessBackend
from schemas.topics import Topics
from shardbus.certs.authority import CertificateAuthority
from shardbus.certs.folder import TlsFolder
from shardbus.config import Settings
from shardbus.errors import ConfigError

NOW = datetime.datetime(2030, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)


class UnusedAclAdmin:
    """Stands in for the ACL client in tests that issue certificates only."""

    async def grant(self, permissions):
        raise AssertionError("no ACLs expected")

    async def revoke_principal(self, principal):
        raise AssertionError("no ACLs expected")


@pytest.fixture(scope="module")
def authority():
    return CertificateAuthority.generate("test CA", clock=lambda: NOW - datetime.timedelta(days=1))


def test_credentials_name_holder_principal(authority):
    access = HolderAccess(authority, Topics("sb"), UnusedAclAdmin(), clock=lambda: NOW)

    tls = access.credentials("holder-1a2b")

    certificate = x509.load_pem_x509_certificate(tls.certificate_pem)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sb.holder.holder-1a2b"
    assert certificate.not_valid_after_utc == NOW + datetime.timedelta(hours=4)
    assert tls.ca_pem == authority.certificate_pem
    assert "key_pem" not in repr(tls)


def test_validity_bounded(authority):
    with pytest.raises(ValueError, match="at most"):
        HolderAccess(authority, Topics("sb"), UnusedAclAdmin(), validity=datetime.timedelta(days=8))


def test_from_settings_plaintext_is_none(tmp_path):
    assert HolderAccess.from_settings(Settings.from_env({"SHARDBUS_HOME": str(tmp_path)})) is None


def test_from_settings_reads_hours(tmp_path):
    folder = TlsFolder(tmp_path / "tls")
    authority, _ = folder.create_ca()
    files, _ = folder.ensure_identity(authority, "sb.provisioner")
    env = {"SHARDBUS_HOME": str(tmp_path), "SHARDBUS_TOPIC_PREFIX": "sb", **files.environment()}

    access = HolderAccess.from_settings(Settings.from_env(env), {"SHARDBUS_HOLDER_CERT_HOURS": "1.5"})

    assert access.validity == datetime.timedelta(hours=1.5)
    with pytest.raises(ConfigError, match="SHARDBUS_HOLDER_CERT_HOURS"):
        HolderAccess.from_settings(Settings.from_env(env), {"SHARDBUS_HOLDER_CERT_HOURS": "200"})


def test_process_backend_writes_private_tls_files(authority, tmp_path):
    access = HolderAccess(authority, Topics("sb"), UnusedAclAdmin())
    spec = HolderSpec("holder-1", "127.0.0.1:1", "sb", tls=access.credentials("holder-1"))
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)

    env = ProcessBackend(tmp_path / "logs")._environment(spec, workdir)  # noqa: SLF001

    assert env["SHARDBUS_KAFKA_TLS_CERT"] == str(workdir / "holder.pem")
    assert stat.S_IMODE((workdir / "holder.key").stat().st_mode) == 0o600
    assert (workdir / "holder.key").read_bytes() == spec.tls.key_pem
    assert (workdir / "ca.pem").read_bytes() == authority.certificate_pem


def test_process_backend_plaintext_sets_no_tls(tmp_path):
    env = ProcessBackend(tmp_path / "logs")._environment(HolderSpec("h", "127.0.0.1:1", "sb"), tmp_path)  # noqa: SLF001

    assert not any(name.startswith("SHARDBUS_KAFKA_TLS") for name in env)
