"""Where `shardbus secret put` and `rotate` read a secret from."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from shardbus.cli.secret_commands import MAX_SECRET_BYTES, read_secret
from shardbus.errors import ConfigError


def test_file_over_limit_rejected(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))

    with pytest.raises(ConfigError, match=f"over {MAX_SECRET_BYTES} bytes"):
        read_secret(argparse.Namespace(file=path))


def test_endless_file_read_up_to_limit():
    # /dev/zero never ends; reading it whole would exhaust the memory.
    with pytest.raises(ConfigError, match=f"over {MAX_SECRET_BYTES} bytes"):
        read_secret(argparse.Namespace(file=Path("/dev/zero")))


def test_file_within_limit_read(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"s3cret")

    assert read_secret(argparse.Namespace(file=path)) == bytearray(b"s3cret")


def test_closed_stdin_is_an_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)

    with pytest.raises(ConfigError, match="stdin is closed"):
        read_secret(argparse.Namespace(file=None))
