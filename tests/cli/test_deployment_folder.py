"""`shardbus init` and `shardbus app add` on a temporary deployment folder."""

from __future__ import annotations

import stat

import pytest

from shardbus import deployment
from shardbus.crypto.keys import MasterKey
from shardbus.crypto.signing import VerifyKey
from shardbus.errors import ConfigError
from shardbus.policy import load_policy


def test_init_creates_private_keys(tmp_path):
    home = tmp_path / "home"
    made = deployment.init_deployment(home)
    assert {p.name for p in made} == {
        "master.key", "reassembler.key", "reassembler.pub", "audit.key", "audit.pub", "policy.yaml",
    }
    for name in ("master.key", "reassembler.key", "audit.key"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    MasterKey.load(home / "master.key")
    key_pair = deployment.load_reassembler_key(home / "reassembler.key")
    public = deployment.load_reassembler_public(home / "reassembler.pub")
    assert public.to_bytes() == key_pair.public_bytes()
    audit_key = deployment.load_signing_key(home / "audit.key")
    assert VerifyKey.from_pem((home / "audit.pub").read_bytes()) == audit_key.verify_key
    assert load_policy(home / "policy.yaml").apps == {}


def test_init_twice_keeps_keys(tmp_path):
    deployment.init_deployment(tmp_path)
    before = (tmp_path / "master.key").read_bytes()
    assert deployment.init_deployment(tmp_path) == []
    assert (tmp_path / "master.key").read_bytes() == before


def test_app_add_registers_key_and_grant(tmp_path):
    deployment.init_deployment(tmp_path)
    key_path = deployment.add_app(tmp_path, "billing", ["db/*"], lease_ttl_s=10)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    signing_key = deployment.load_signing_key(key_path)
    app = load_policy(tmp_path / "policy.yaml").app("billing")
    assert app.verify_key == signing_key.verify_key
    assert app.grant_for("db/password", "lease").lease_ttl_s == 10


def test_app_add_rejects_duplicates_and_bad_ids(tmp_path):
    deployment.init_deployment(tmp_path)
    deployment.add_app(tmp_path, "billing", ["db/*"])
    with pytest.raises(ConfigError, match="already"):
        deployment.add_app(tmp_path, "billing", ["db/*"])
    with pytest.raises(ConfigError, match="invalid app id 'bad id'"):
        deployment.add_app(tmp_path, "bad id", ["db/*"])
    with pytest.raises(ConfigError, match="invalid --lease-ttl 0"):
        deployment.add_app(tmp_path, "payments", ["db/*"], lease_ttl_s=0)


def test_key_file_errors_are_clear(tmp_path):
    (tmp_path / "reassembler.key").write_text("garbage\n")
    with pytest.raises(ConfigError, match="expected one line"):
        deployment.load_reassembler_key(tmp_path / "reassembler.key")
    with pytest.raises(ConfigError, match="run 'shardbus init' first"):
        deployment.load_reassembler_public(tmp_path / "missing.pub")
    (tmp_path / "app.key").write_text("not pem")
    with pytest.raises(ConfigError, match="PEM"):
        deployment.load_signing_key(tmp_path / "app.key")


@pytest.mark.parametrize("lost", ["master.key", "audit.key"])
def test_init_refuses_lost_key(tmp_path, lost):
    deployment.init_deployment(tmp_path)
    (tmp_path / lost).unlink()

    with pytest.raises(ConfigError, match=f"{lost} is missing") as caught:
        deployment.init_deployment(tmp_path)

    assert "restore the file from your backup" in str(caught.value)
    assert not (tmp_path / lost).exists()


def test_app_key_path_checks_id_and_file(tmp_path):
    deployment.init_deployment(tmp_path)
    deployment.add_app(tmp_path, "billing", ["db/*"])

    assert deployment.app_key_path(tmp_path, "billing") == tmp_path / "apps" / "billing.key"
    for bad in ("../master", "..", "a/b", ""):
        with pytest.raises(ConfigError, match="invalid app id"):
            deployment.app_key_path(tmp_path, bad)
    with pytest.raises(ConfigError, match="shardbus app add nosuchapp"):
        deployment.app_key_path(tmp_path, "nosuchapp")
