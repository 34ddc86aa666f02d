"""`shardbus certs init | issue | env` on a temporary deployment folder, without Kafka."""

from __future__ import annotations

import datetime

import pytest

from shardbus import deployment
from shardbus.certs.folder import TlsFolder
from shardbus.cli.main import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    deployment.init_deployment(home)
    deployment.add_app(home, "billing", ["db/*"])
    for name in ("SHARDBUS_TLS_DIR", "SHARDBUS_KAFKA_TLS_CA", "SHARDBUS_KAFKA_TLS_CERT", "SHARDBUS_KAFKA_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHARDBUS_HOME", str(home))
    monkeypatch.setenv("SHARDBUS_TOPIC_PREFIX", "sb")
    return home


def test_init_issues_every_role(home, capsys):
    assert main(["certs", "init"]) == 0

    folder = TlsFolder(home / "tls")
    for principal in ("broker", "admin", "sb.authorizer", "sb.reassembler", "sb.provisioner", "sb.controller",
                      "sb.app.billing"):
        assert folder.has(principal), principal
    assert "created the CA" in capsys.readouterr().out


def test_init_names_extra_broker_host(home):
    from cryptography import x509

    assert main(["certs", "init", "--broker-host", "kafka-tls"]) == 0

    certificate = x509.load_pem_x509_certificate((home / "tls" / "broker.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "kafka-tls"]


def test_init_twice_issues_nothing(home, capsys):
    main(["certs", "init"])
    capsys.readouterr()

    assert main(["certs", "init"]) == 0

    output = capsys.readouterr().out
    assert "using the CA" in output
    assert "issued" not in output


def test_issue_holder_is_short_lived(home, capsys):
    main(["certs", "init"])

    assert main(["certs", "issue", "holder", "holder-1", "--hours", "2"]) == 0

    identity_pem = (home / "tls" / "sb.holder.holder-1.pem").read_bytes()
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(identity_pem)
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=1) < lifetime <= datetime.timedelta(hours=2)


def test_issue_rejects_week_long_holder(home, capsys):
    main(["certs", "init"])

    assert main(["certs", "issue", "holder", "holder-1", "--hours", "500"]) == 2
    assert "at most 168 for a holder" in capsys.readouterr().err


def test_env_prints_identity(home, capsys):
    main(["certs", "init"])
    capsys.readouterr()

    assert main(["certs", "env", "app", "billing"]) == 0

    output = capsys.readouterr().out
    assert f"export SHARDBUS_KAFKA_TLS_CERT={home / 'tls' / 'sb.app.billing.pem'}" in output
    assert f"export SHARDBUS_KAFKA_TLS_CA={home / 'tls' / 'ca.pem'}" in output


def test_env_unknown_app_says_what_to_run(home, capsys):
    main(["certs", "init"])

    assert main(["certs", "env", "app", "payroll"]) == 2
    assert "shardbus certs issue" in capsys.readouterr().err


def test_acl_apply_needs_tls(home, capsys):
    assert main(["certs", "acl", "apply"]) == 2
    assert "SHARDBUS_KAFKA_TLS_CA" in capsys.readouterr().err
