"""client_options: plaintext by default, mutual TLS when the three files are set."""

from __future__ import annotations

import ssl

import pytest

from shardbus.certs.folder import TlsFolder
from shardbus.config import KafkaTls, Settings
from shardbus.errors import ConfigError
from shardbus.kafka import client_options


def test_plaintext_without_tls_settings():
    assert client_options(KafkaTls.from_env({})) == {"security_protocol": "PLAINTEXT"}


def test_partial_tls_settings_rejected():
    with pytest.raises(ConfigError, match="SHARDBUS_KAFKA_TLS_KEY not set"):
        KafkaTls.from_env({"SHARDBUS_KAFKA_TLS_CA": "ca.pem", "SHARDBUS_KAFKA_TLS_CERT": "me.pem"})


def test_tls_settings_give_verifying_context(tmp_path):
    folder = TlsFolder(tmp_path / "tls")
    authority, _ = folder.create_ca()
    files, _ = folder.ensure_identity(authority, "sb.app.billing")
    settings = Settings.from_env({"SHARDBUS_HOME": str(tmp_path), **files.environment()})

    options = client_options(settings)

    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_unreadable_tls_file_names_variables(tmp_path):
    tls = KafkaTls(tmp_path / "missing-ca.pem", tmp_path / "me.pem", tmp_path / "me.key")

    with pytest.raises(ConfigError, match="SHARDBUS_KAFKA_TLS_CA"):
        client_options(tls)


def test_tls_dir_defaults_to_home(tmp_path):
    assert Settings.from_env({"SHARDBUS_HOME": str(tmp_path)}).tls_dir == tmp_path / "tls"
    overridden = Settings.from_env({"SHARDBUS_HOME": str(tmp_path), "SHARDBUS_TLS_DIR": "/etc/sb"})
    assert str(overridden.tls_dir) == "/etc/sb"
