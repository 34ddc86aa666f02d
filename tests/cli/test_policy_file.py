"""Parsing the policy file: grants, wildcards and every rejection."""

from __future__ import annotations

import pytest

from shardbus.crypto.signing import SigningKey
from shardbus.errors import ConfigError
from shardbus.policy import load_policy, parse_policy

KEY = SigningKey.generate().verify_key.to_text()


def _doc(**app):
    app.setdefault("verify_key", KEY)
    app.setdefault("grants", [{"secrets": ["db/*"], "operations": ["lease"]}])
    return {"version": 1, "apps": {"billing": app}}


def test_policy_grants_matching_secret():
    policy = parse_policy(_doc())
    app = policy.app("billing")
    assert app is not None
    assert app.grant_for("db/password", "lease") is not None
    assert app.grant_for("db/replica/password", "lease") is not None
    assert app.grant_for("stripe/key", "lease") is None
    assert policy.app("intruder") is None


def test_policy_default_ttl_and_age():
    policy = parse_policy(_doc())
    assert policy.max_request_age_s == 30
    assert policy.app("billing").grants[0].lease_ttl_s == 30


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], "expected a mapping"),
        ({"version": 2, "apps": {}}, "version must be 1"),
        ({"version": 1, "apps": {}, "extra": 1}, "unknown top-level keys"),
        ({"version": 1, "max_request_age_s": 0}, "max_request_age_s"),
        ({"version": 1, "apps": {"bad id!": {}}}, "app id must match"),
        (_doc(verify_key="rsa:abc"), "verify_key"),
        (_doc(verify_key="ed25519:!!!"), "verify_key"),
        (_doc(grants=[{"secrets": []}]), "secrets"),
        (_doc(grants=[{"secrets": ["a"], "operations": ["sign"]}]), "unknown operation 'sign'"),
        (_doc(grants=[{"secrets": ["a"], "lease_ttl_s": 0}]), "lease_ttl_s"),
        (_doc(grants=[{"secrets": ["a"], "lease_ttl_s": True}]), "lease_ttl_s"),
        (_doc(grants=[{"secrets": ["a"], "color": "red"}]), "unknown keys"),
        (_doc(extra=1), "unknown keys"),
    ],
)
def test_policy_rejects_invalid(document, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_policy(document)


def test_policy_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apps: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(bad)


def test_policy_duplicate_key_rejected(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\napps:\n  billing:\n    verify_key: '{KEY}'\napps: {{}}\n")
    with pytest.raises(ConfigError, match="duplicate key 'apps'"):
        load_policy(path)
