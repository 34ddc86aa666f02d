"""Master key: file format, permissions, environment, and derived keys."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from shardbus.crypto.keys import MasterKey
from shardbus.errors import ConfigError

MATERIAL = bytes(range(32))
LINE = "shardbus-master-key v1 7 " + base64.b64encode(MATERIAL).decode() + "\n"


def test_generate_uses_randbytes():
    key = MasterKey.generate(3, randbytes=lambda n: b"\x01" * n)
    assert key.material == b"\x01" * 32
    assert key.version == 3


def test_repr_hides_material():
    key = MasterKey(MATERIAL, 7)
    assert repr(key) == "MasterKey(version=7)"
    assert base64.b64encode(MATERIAL).decode() not in repr(key)


def test_equality_compares_material_and_version():
    assert MasterKey(MATERIAL, 7) == MasterKey(MATERIAL, 7)
    assert MasterKey(MATERIAL, 7) != MasterKey(MATERIAL, 8)
    assert MasterKey(MATERIAL, 7) != MasterKey(bytes(32), 7)


@pytest.mark.parametrize(("material", "version"), [(bytes(31), 1), (bytes(33), 1), (MATERIAL, -1), (MATERIAL, 2**63)])
def test_constructor_rejects_invalid(material, version):
    with pytest.raises(ValueError):
        MasterKey(material, version)


def test_text_round_trip():
    key = MasterKey(MATERIAL, 7)
    assert key.to_text() == LINE
    assert MasterKey.from_text(LINE) == key


def test_write_creates_0600_file(tmp_path):
    path = tmp_path / "master.key"
    key = MasterKey.generate(2)
    key.write(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert MasterKey.load(path) == key
    assert os.listdir(tmp_path) == ["master.key"]


def test_write_does_not_replace_existing(tmp_path):
    path = tmp_path / "master.key"
    first = MasterKey.generate(1)
    first.write(path)
    with pytest.raises(FileExistsError, match="master key file already exists"):
        MasterKey.generate(2).write(path)
    assert MasterKey.load(path) == first
    assert os.listdir(tmp_path) == ["master.key"]


def test_write_overwrite_replaces(tmp_path):
    path = tmp_path / "master.key"
    MasterKey.generate(1).write(path)
    second = MasterKey.generate(2)
    second.write(path, overwrite=True)
    assert MasterKey.load(path) == second
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_rejects_group_or_other_access(tmp_path, mode):
    path = tmp_path / "master.key"
    path.write_text(LINE)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"has mode {mode:04o}.*chmod 600"):
        MasterKey.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        MasterKey.load(tmp_path / "absent.key")


def test_load_rejects_directory(tmp_path):
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        MasterKey.load(directory)


BAD_CONTENTS = [
    ("", "expected one line"),
    ("c2VjcmV0\n", "expected one line"),
    ("other-key v1 1 " + base64.b64encode(MATERIAL).decode(), "does not start with 'shardbus-master-key'"),
    ("shardbus-master-key v9 1 " + base64.b64encode(MATERIAL).decode(), "unsupported format 'v9'"),
    ("shardbus-master-key v1 -1 " + base64.b64encode(MATERIAL).decode(), "version must be a decimal integer"),
    ("shardbus-master-key v1 x " + base64.b64encode(MATERIAL).decode(), "version must be a decimal integer"),
    ("shardbus-master-key v1 1 not*base64", "not valid base64"),
    ("shardbus-master-key v1 1 " + base64.b64encode(bytes(16)).decode(), "must be 32 bytes, got 16"),
]


@pytest.mark.parametrize(("content", "message"), BAD_CONTENTS)
def test_load_rejects_bad_contents(tmp_path, content, message):
    path = tmp_path / "master.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as raised:
        MasterKey.load(path)
    assert str(path) in str(raised.value)
    assert base64.b64encode(MATERIAL).decode() not in str(raised.value)


def test_load_rejects_binary_and_large_files(tmp_path):
    path = tmp_path / "master.key"
    path.write_bytes(b"\xff" * 10)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not ASCII text"):
        MasterKey.load(path)
    path.write_bytes(b"a" * 5000)
    with pytest.raises(ConfigError, match="larger than 4096 bytes"):
        MasterKey.load(path)


def test_from_env_reads_line():
    key = MasterKey.from_env(environ={"SHARDBUS_MASTER_KEY": LINE})
    assert key == MasterKey(MATERIAL, 7)


def test_from_env_other_variable():
    key = MasterKey.from_env("OTHER_KEY", environ={"OTHER_KEY": LINE.strip()})
    assert key.version == 7


def test_from_env_missing_variable():
    with pytest.raises(ConfigError, match="environment variable SHARDBUS_MASTER_KEY is not set"):
        MasterKey.from_env(environ={})


def test_from_env_bad_value_names_variable():
    with pytest.raises(ConfigError, match="environment variable SHARDBUS_MASTER_KEY: the key is not valid base64"):
        MasterKey.from_env(environ={"SHARDBUS_MASTER_KEY": "shardbus-master-key v1 1 %%%"})


def test_from_env_uses_process_environment(monkeypatch):
    monkeypatch.setenv("SHARDBUS_MASTER_KEY", LINE)
    assert MasterKey.from_env() == MasterKey(MATERIAL, 7)


def test_derived_keys_are_distinct():
    key = MasterKey(MATERIAL, 7)
    derived = [
        key.fragment_key("db/password", 1, 1, "holder-a"),
        key.fragment_key("db/password", 1, 2, "holder-a"),
        key.fragment_key("db/password", 1, 1, "holder-b"),
        key.fragment_key("db/password", 2, 1, "holder-a"),
        key.fragment_key("db/passwor", 1, 1, "dholder-a"),
        MasterKey(MATERIAL, 8).fragment_key("db/password", 1, 1, "holder-a"),
        key.mapping_key(),
        key.verify_key("db/password", 1),
        key.verify_key("db/password", 2),
        key.audit_key(),
    ]
    assert all(len(value) == 32 for value in derived)
    assert len(set(derived)) == len(derived)


def test_derivation_is_deterministic():
    assert MasterKey(MATERIAL, 7).verify_key("a", 1) == MasterKey(MATERIAL, 7).verify_key("a", 1)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("", 1, 1, "h"), ValueError, "secret_id must not be empty"),
        (("s", 1, 0, "h"), ValueError, "index must be in 1..255, got 0"),
        (("s", 1, 256, "h"), ValueError, "index must be in 1..255, got 256"),
        (("s", -1, 1, "h"), ValueError, "secret_version must be in 0"),
        (("s", 1, 1, ""), ValueError, "holder_id must not be empty"),
        (("s", "1", 1, "h"), TypeError, "secret_version must be an int"),
    ],
)
def test_fragment_key_rejects_invalid_ids(arguments, error, message):
    with pytest.raises(error, match=message):
        MasterKey(MATERIAL, 7).fragment_key(*arguments)
