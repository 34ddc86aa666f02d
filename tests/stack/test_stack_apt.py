"""Installing redis-server with apt-get: found, installed, or a clear error.

Every test runs fake apt-get, sudo and redis-server executables from a
folder in tmp_path, with PATH set to that folder alone, so the real apt-get
never runs. The effective uid is passed in, so the sudo paths are tested
whether the suite runs as root or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardbus.devstack import apt, redis_server
from shardbus.devstack.errors import StackError

ROOT = Path(__file__).resolve().parents[2]

# install_ok: `install` creates redis-server. after_update: `install` fails
# until `update` has run. fail: `install` always fails. update_fails: both
# fail. no_binary: `install` succeeds but creates nothing.
FAKE_APT_GET = """#!{python}
import json, os, sys
from pathlib import Path

folder = Path(sys.argv[0]).parent
mode = {mode!r}
arguments = sys.argv[1:]
with open(folder / "apt-get.calls", "a") as calls:
    calls.write(json.dumps({{"argv": arguments, "frontend": os.environ.get("DEBIAN_FRONTEND")}}) + "\\n")
command = arguments[0]
if command == "update":
    if mode == "update_fails":
        print("E: The repository is not signed.")
        sys.exit(100)
    (folder / "updated").touch()
    sys.exit(0)
if mode == "fail" or mode == "update_fails" or (mode == "after_update" and not (folder / "updated").exists()):
    print("E: Unable to locate package redis-server")
    sys.exit(100)
if mode != "no_binary":
    server = folder / "redis-server"
    server.write_text("#!/bin/sh\\n")
    server.chmod(0o755)
sys.exit(0)
"""

# allowed: runs the command as passwordless sudo would. password: fails as
# sudo -n does when the policy requires a password.
FAKE_SUDO = """#!{python}
import os, sys
from pathlib import Path

folder = Path(sys.argv[0]).parent
with open(folder / "sudo.calls", "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if {mode!r} == "password":
    print("sudo: a password is required", file=sys.stderr)
    sys.exit(1)
arguments = sys.argv[1:]
if arguments[:1] == ["-n"]:
    arguments = arguments[1:]
if arguments == ["true"]:
    sys.exit(0)
os.execv(arguments[0], arguments)
"""


def write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def fake_bin(tmp_path: Path, apt_get: str | None = None, sudo: str | None = None, redis: bool = False) -> Path:
    """Return a folder that contains only the requested fake programs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    if apt_get is not None:
        write_executable(folder / "apt-get", FAKE_APT_GET.format(python=sys.executable, mode=apt_get))
    if sudo is not None:
        write_executable(folder / "sudo", FAKE_SUDO.format(python=sys.executable, mode=sudo))
    if redis:
        write_executable(folder / "redis-server", "#!/bin/sh\n")
    return folder


def apt_calls(folder: Path) -> list[dict]:
    path = folder / "apt-get.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def sudo_calls(folder: Path) -> list[str]:
    path = folder / "sudo.calls"
    return path.read_text().splitlines() if path.exists() else []


INSTALL = ["install", "-y", "-q", "--no-install-recommends", "redis-server"]


def test_redis_server_found_skips_apt(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", redis=True)
    messages: list[str] = []

    found = redis_server.find_or_install_redis_server({"PATH": str(folder)}, messages.append, euid=0)

    assert found == str(folder / "redis-server")
    assert apt_calls(folder) == []
    assert messages == []


def test_redis_server_installed_as_root(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="allowed")
    messages: list[str] = []

    found = redis_server.find_or_install_redis_server({"PATH": str(folder)}, messages.append, euid=0)

    assert found == str(folder / "redis-server")
    assert apt_calls(folder) == [{"argv": INSTALL, "frontend": "noninteractive"}]
    assert sudo_calls(folder) == []
    assert messages[0] == "redis-server was not found on PATH; installing Debian's redis-server package"
    assert messages[1].startswith("running: /usr/bin/env DEBIAN_FRONTEND=noninteractive ")
    assert messages[1].endswith("apt-get install -y -q --no-install-recommends redis-server")
    assert messages[-1] == f"installed {folder / 'redis-server'}"


def test_redis_server_installed_with_sudo(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="allowed")
    messages: list[str] = []

    found = redis_server.find_or_install_redis_server({"PATH": str(folder)}, messages.append, euid=1000)

    assert found == str(folder / "redis-server")
    assert apt_calls(folder) == [{"argv": INSTALL, "frontend": "noninteractive"}]
    calls = sudo_calls(folder)
    assert calls[0] == "-n true"
    assert calls[1] == f"-n /usr/bin/env DEBIAN_FRONTEND=noninteractive {folder / 'apt-get'} " + " ".join(INSTALL)
    assert messages[1].startswith(f"running: {folder / 'sudo'} -n /usr/bin/env ")


def test_install_refreshes_package_lists_after_failure(tmp_path):
    folder = fake_bin(tmp_path, apt_get="after_update")
    messages: list[str] = []

    found = redis_server.find_or_install_redis_server({"PATH": str(folder)}, messages.append, euid=0)

    assert found == str(folder / "redis-server")
    assert [call["argv"] for call in apt_calls(folder)] == [INSTALL, ["update", "-q"], INSTALL]
    assert (
        "apt-get install failed (exit status 100); refreshing the package lists and trying again" in messages
    )


def test_sudo_with_password_names_command(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="password")

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=1000)

    message = str(caught.value)
    assert message.startswith("redis-server was not found on PATH, and installing it failed: ")
    assert "runs as uid 1000 and 'sudo -n' is not allowed (sudo: a password is required)" in message
    assert message.endswith("install redis-server by hand, then try again: sudo apt-get install -y redis-server")
    assert apt_calls(folder) == []


def test_without_sudo_names_su_command(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok")

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=1000)

    message = str(caught.value)
    assert "runs as uid 1000 and sudo was not found on PATH" in message
    assert message.endswith("then try again: su -c 'apt-get install -y redis-server'")
    assert apt_calls(folder) == []


def test_install_failure_names_command(tmp_path):
    folder = fake_bin(tmp_path, apt_get="fail")

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=0)

    message = str(caught.value)
    assert "apt-get install redis-server failed (exit status 100) even after apt-get update" in message
    assert message.endswith("then run: apt-get install -y redis-server")
    assert [call["argv"] for call in apt_calls(folder)] == [INSTALL, ["update", "-q"], INSTALL]


def test_update_failure_names_command(tmp_path):
    folder = fake_bin(tmp_path, apt_get="update_fails", sudo="allowed")

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=1000)

    message = str(caught.value)
    assert "apt-get update failed (exit status 100), so redis-server could not be installed" in message
    assert message.endswith("then run: sudo apt-get install -y redis-server")


def test_without_apt_get_names_package_manager(tmp_path):
    folder = fake_bin(tmp_path)

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=0)

    message = str(caught.value)
    assert "apt-get was not found on PATH, so redis-server cannot be installed from Debian's packages" in message
    assert "install it with this system's package manager" in message


def test_installed_but_not_on_path(tmp_path):
    folder = fake_bin(tmp_path, apt_get="no_binary")

    with pytest.raises(StackError) as caught:
        redis_server.find_or_install_redis_server({"PATH": str(folder)}, lambda message: None, euid=0)

    assert f"apt-get installed redis-server, but redis-server is still not on PATH ({folder})" in str(caught.value)


def test_update_uses_sudo(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="allowed")

    apt.update({"PATH": str(folder)}, lambda message: None, euid=1000)

    assert apt_calls(folder) == [{"argv": ["update", "-q"], "frontend": "noninteractive"}]
    assert sudo_calls(folder)[0] == "-n true"


def test_update_without_root_names_command(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="password")

    with pytest.raises(StackError) as caught:
        apt.update({"PATH": str(folder)}, lambda message: None, euid=1000)

    assert str(caught.value).endswith("refresh the package lists by hand: sudo apt-get update")


def run_apt_install(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # bash and env come from the system folders, after the fakes.
    env = {"PATH": f"{folder}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [str(ROOT / "scripts" / "lib" / "apt-install"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_apt_install_script_installs(tmp_path):
    # A fake sudo keeps the real one out of the test when the suite does not run as root.
    folder = fake_bin(tmp_path, apt_get="install_ok", sudo="allowed")

    result = run_apt_install(folder, "redis-server")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "apt-install: running: " in result.stderr
    assert [call["argv"] for call in apt_calls(folder)] == [INSTALL]


def test_apt_install_script_reports_failure(tmp_path):
    folder = fake_bin(tmp_path, apt_get="update_fails", sudo="allowed")

    result = run_apt_install(folder, "redis-server")

    assert result.returncode == 1
    assert "apt-install: error: apt-get update failed (exit status 100)" in result.stderr
    assert "Traceback" not in result.stderr


def test_apt_install_script_without_packages_prints_usage(tmp_path):
    folder = fake_bin(tmp_path, apt_get="install_ok")

    result = run_apt_install(folder)

    assert result.returncode == 2
    assert "usage: scripts/lib/apt-install PACKAGE..." in result.stderr
    assert apt_calls(folder) == []
