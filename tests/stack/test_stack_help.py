"""-h and --help of the scripts print their usage and start nothing.

Each run points every state folder the scripts use at an empty folder, and
PATH holds only the programs that printing the usage needs (bash, dirname,
awk, and python3 for scripts/stack). A script that went past its help would
create one of those folders, or fail because it found no python3, apt-get
or java, before it could change anything on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each script and a line its help prints.
SCRIPTS = [
    ("scripts/stack", "usage: scripts/stack"),
    ("scripts/demo", "Usage: scripts/demo [--plaintext] [--backend process|microvm]"),
    ("scripts/test", "Usage: scripts/test [pytest arguments...]"),
    ("scripts/microvm-setup", "Usage: scripts/microvm-setup"),
    (".ci/run", "Usage: .ci/run"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def minimal_path(folder: Path, programs: list[str]) -> str:
    folder.mkdir()
    for program in programs:
        # python3 is this interpreter, because the one on PATH may be a wrapper
        # script (such as a pyenv shim) that needs more programs.
        target = sys.executable if program == "python3" else shutil.which(program)
        (folder / program).symlink_to(target)
    return str(folder)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize(("script", "usage"), SCRIPTS)
def test_help_starts_nothing(tmp_path, script, usage, flag):
    programs = ["bash", "dirname", "awk"]
    if script == "scripts/stack":
        programs.append("python3")
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHARDBUS_")}
    # Free ports keep a script that wrongly goes on from reaching the shared stack.
    env.update(
        PATH=minimal_path(tmp_path / "bin", programs),
        HOME=str(work),
        SHARDBUS_STACK_DIR=str(work / "stack"),
        SHARDBUS_TLS_STACK_DIR=str(work / "stack-tls"),
        SHARDBUS_KAFKA_PORT=str(free_port()),
        SHARDBUS_KAFKA_CONTROLLER_PORT=str(free_port()),
        SHARDBUS_REDIS_PORT=str(free_port()),
        SHARDBUS_TLS_KAFKA_PORT=str(free_port()),
        SHARDBUS_TLS_KAFKA_CONTROLLER_PORT=str(free_port()),
        SHARDBUS_MICROVM_CACHE=str(work / "microvm"),
        XDG_CACHE_HOME=str(work / "cache"),
        PYTHON=str(work / "no-python"),
    )

    result = subprocess.run(
        [str(ROOT / script), flag],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert usage in result.stdout
    assert result.stderr == ""
    assert sorted(path.name for path in work.iterdir()) == []
