"""The `shardbus` command."""

from shardbus.cli.main import main

__all__ = ["main"]
