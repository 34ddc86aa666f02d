"""The CLI's exit status for each kind of failure, so scripts can tell them apart."""

from __future__ import annotations

import argparse
import importlib

import pytest

from shardbus.errors import ConfigError, Denied, ServiceUnavailable

cli = importlib.import_module("shardbus.cli.main")


def run_raising(monkeypatch, error: Exception) -> int:
    class Parser:
        def parse_args(self, argv):
            def handler(args):
                raise error

            return argparse.Namespace(verbose=False, handler=handler)

    monkeypatch.setattr(cli, "build_parser", Parser)
    return cli.main([])


@pytest.mark.parametrize(
    ("error", "status", "prefix"),
    [
        (ValueError("invalid secret name 'a b'"), cli.EXIT_USAGE, "shardbus: error: invalid secret name"),
        (ConfigError("missing key file apps/x.key"), cli.EXIT_USAGE, "shardbus: error: missing key file"),
        (ServiceUnavailable("no reply within 30 s"), cli.EXIT_UNAVAILABLE, "shardbus: error: no reply"),
        (Denied("not_granted", "app billing has no grant"), cli.EXIT_DENIED, "shardbus: denied: not_granted"),
    ],
)
def test_failure_exit_status(monkeypatch, capsys, error, status, prefix):
    assert run_raising(monkeypatch, error) == status
    assert capsys.readouterr().err.startswith(prefix)


def test_exit_statuses_distinct():
    statuses = {cli.EXIT_USAGE, cli.EXIT_UNAVAILABLE, cli.EXIT_DENIED}
    assert len(statuses) == 3
    assert statuses.isdisjoint({0, 1})
