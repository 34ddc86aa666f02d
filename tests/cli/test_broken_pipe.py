"""The CLI when the reader of its output leaves early, as `| head` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A command whose handler writes without end, run through the CLI's main().
ENDLESS = """
import argparse, importlib, sys
cli = importlib.import_module("shardbus.cli.main")

class Parser:
    def parse_args(self, argv):
        def handler(args):
            while True:
                print("line " * 20)
        return argparse.Namespace(verbose=False, handler=handler)

cli.build_parser = Parser
sys.exit(cli.main([]))
"""


def test_closed_stdout_ends_quietly():
    process = subprocess.Popen([sys.executable, "-c", ENDLESS], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.read(4096)
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 141
    assert b"BrokenPipeError" not in stderr
    assert b"Exception ignored" not in stderr
