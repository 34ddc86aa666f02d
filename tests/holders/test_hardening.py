"""The resource limits a holder sets on itself, each checked in a child process of its own.

The limits cannot be raised again once set, so every check runs in a fresh
interpreter rather than in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from holders.hardening import ResourceLimits

from holder_harness import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and RLIMIT_DATA are Linux only")

MIB = 1024 * 1024


def _run(script: str) -> dict:
    """Run `script` in a child interpreter and return the JSON object it prints last."""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_harden_sets_given_limits():
    output = _run(
        "import json, resource\n"
        "from holders.hardening import ResourceLimits, harden\n"
        f"report = harden(limits=ResourceLimits(open_files=64, data_bytes={200 * MIB}, file_bytes={3 * MIB}))\n"
        "print(json.dumps({'applied': report.applied, 'skipped': report.skipped,\n"
        "    'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),\n"
        "    'data': resource.getrlimit(resource.RLIMIT_DATA),\n"
        "    'fsize': resource.getrlimit(resource.RLIMIT_FSIZE)}))\n"
    )

    assert output["nofile"] == [64, 64]
    assert output["data"] == [200 * MIB, 200 * MIB]
    assert output["fsize"] == [3 * MIB, 3 * MIB]
    for step in ("open files limited", "data size limited", "file size limited"):
        assert step in output["applied"], output["skipped"]


def test_allocation_past_data_limit_fails():
    output = _run(
        "import json\n"
        "from holders.hardening import limit_data\n"
        f"limit_data({128 * MIB})\n"
        "try:\n"
        f"    bytearray({256 * MIB})\n"
        "    failed = False\n"
        "except MemoryError:\n"
        "    failed = True\n"
        "small = bytearray(1024 * 1024)\n"
        "print(json.dumps({'failed': failed, 'small': len(small)}))\n"
    )

    assert output["failed"] is True
    assert output["small"] == MIB


def test_data_limit_below_usage_rejected():
    output = _run(
        "import json, resource\n"
        "from holders.hardening import limit_data\n"
        "try:\n"
        f"    limit_data({MIB})\n"
        "    message = ''\n"
        "except ValueError as exc:\n"
        "    message = str(exc)\n"
        "print(json.dumps({'message': message, 'data': resource.getrlimit(resource.RLIMIT_DATA)}))\n"
    )

    assert "below the" in output["message"]
    assert "give a larger limit" in output["message"]
    assert output["data"][0] != MIB


def test_write_past_file_size_limit_fails_with_efbig(tmp_path):
    target = tmp_path / "log"
    output = _run(
        "import errno, json\n"
        "from holders.hardening import limit_file_size\n"
        "limit_file_size(4096)\n"
        f"with open({str(target)!r}, 'wb', buffering=0) as file:\n"
        "    written = file.write(b'x' * 4096)\n"
        "    try:\n"
        "        file.write(b'y')\n"
        "        code = 0\n"
        "    except OSError as exc:\n"
        "        code = exc.errno\n"
        "print(json.dumps({'written': written, 'efbig': code == errno.EFBIG}))\n"
    )

    assert output["written"] == 4096
    assert output["efbig"] is True
    assert target.stat().st_size == 4096


@pytest.mark.parametrize("field", ["open_files", "data_bytes", "file_bytes"])
@pytest.mark.parametrize("value", [0, -1])
def test_resource_limits_reject_non_positive(field, value):
    with pytest.raises(ValueError, match=f"ResourceLimits.{field} must be positive, got {value}"):
        ResourceLimits(**{field: value})


def test_resource_limits_reject_non_int():
    with pytest.raises(TypeError, match="ResourceLimits.data_bytes must be an int, got float"):
        ResourceLimits(data_bytes=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["--max-data", "--max-file-size"])
def test_holder_command_rejects_non_positive_limit(option):
    result = subprocess.run(
        [sys.executable, "-m", "holders", "--holder-id", "holder-test", option, "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )

    assert result.returncode == 2
    assert f"{option} must be a positive number of MiB, got 0" in result.stderr
