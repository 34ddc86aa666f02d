"""Install missing Debian packages with apt-get, as root or through passwordless sudo.

The stack installs redis-server with it, and `.ci/run` and
`scripts/microvm-setup` run it through `scripts/lib/apt-install`. An install
first tries the package lists the machine already has and refreshes them
(`apt-get update`) only when that fails, because a refresh downloads the
lists of every configured repository. sudo runs with `-n`, so a sudo that
requires a password fails at once with a message that names the command to
run by hand, instead of waiting for a password in a script.

Like the rest of the stack manager, this module uses only the standard library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, Mapping, Sequence

from shardbus.devstack.errors import StackError

# A first install from a slow mirror can take minutes, so the bound is generous.
APT_TIMEOUT = 900.0
SUDO_CHECK_TIMEOUT = 30.0
# sudo resets the environment, so the noninteractive front end is set
# through env(1), which Debian's coreutils installs at this path.
_ENV = "/usr/bin/env"

Log = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(f"apt-install: {message}", file=sys.stderr, flush=True)


def manual_command(arguments: str, euid: int, sudo_found: bool) -> str:
    """Return the apt-get command with `arguments` as a user runs it by hand: as root, or with sudo."""
    command = "apt-get " + arguments
    if euid == 0:
        return command
    if sudo_found:
        return "sudo " + command
    # Without sudo, su prompts for the root password and runs the command as root.
    return f"su -c '{command}'"


def root_prefix(environ: Mapping[str, str], euid: int) -> list[str]:
    """Return the argv prefix that runs a command as root: nothing for root, else `sudo -n`.

    Raises StackError when the process is not root and sudo is missing or
    requires a password.
    """
    if euid == 0:
        return []
    sudo = _which("sudo", environ)
    if sudo is None:
        raise StackError(f"apt-get needs root, but this process runs as uid {euid} and sudo was not found on PATH")
    try:
        check = subprocess.run(
            [sudo, "-n", "true"],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUDO_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StackError(f"apt-get needs root, but running '{sudo} -n true' failed ({error})") from None
    if check.returncode != 0:
        reason = check.stderr.strip() or f"exit status {check.returncode}"
        raise StackError(
            f"apt-get needs root, but this process runs as uid {euid} and 'sudo -n' "
            f"is not allowed ({reason})"
        )
    return [sudo, "-n"]


def install(
    packages: Sequence[str],
    environ: Mapping[str, str] | None = None,
    log: Log = _log_to_stderr,
    euid: int | None = None,
) -> None:
    """Install `packages` with apt-get, and refresh the package lists once if the first try fails.

    apt-get's own output goes to standard error, so a caller's standard
    output (such as the exports of `scripts/stack up`) stays clean. `euid`
    defaults to the process's effective uid. Raises StackError naming the
    command to run by hand when apt-get is missing, when root is not
    available, or when the install still fails after the refresh.
    """
    env = dict(os.environ if environ is None else environ)
    uid = os.geteuid() if euid is None else euid
    names = " ".join(packages)
    by_hand = manual_command(f"install -y {names}", uid, _which("sudo", env) is not None)
    apt_get = _which("apt-get", env)
    if apt_get is None:
        raise StackError(
            f"apt-get was not found on PATH, so {names} cannot be installed from Debian's packages; "
            "install it with this system's package manager"
        )
    try:
        prefix = root_prefix(env, uid)
    except StackError as error:
        raise StackError(f"{error}; install {names} by hand, then try again: {by_hand}") from None

    install_command = _apt_command(prefix, apt_get, "install", "-y", "-q", "--no-install-recommends", *packages)
    status = _run(install_command, env, log)
    if status == 0:
        return

    log(f"apt-get install failed (exit status {status}); refreshing the package lists and trying again")
    update_status = _run(_apt_command(prefix, apt_get, "update", "-q"), env, log)
    if update_status != 0:
        raise StackError(
            f"apt-get update failed (exit status {update_status}), so {names} could not be installed; "
            f"check apt-get's output above and the APT sources, then run: {by_hand}"
        )
    status = _run(install_command, env, log)
    if status != 0:
        raise StackError(
            f"apt-get install {names} failed (exit status {status}) even after apt-get update; "
            f"check apt-get's output above, then run: {by_hand}"
        )


def update(environ: Mapping[str, str] | None = None, log: Log = _log_to_stderr, euid: int | None = None) -> None:
    """Refresh the package lists (apt-get update) as root; raise StackError when that fails."""
    env = dict(os.environ if environ is None else environ)
    uid = os.geteuid() if euid is None else euid
    apt_get = _which("apt-get", env)
    if apt_get is None:
        raise StackError("apt-get was not found on PATH, so the package lists cannot be refreshed")
    try:
        prefix = root_prefix(env, uid)
    except StackError as error:
        by_hand = manual_command("update", uid, _which("sudo", env) is not None)
        raise StackError(f"{error}; refresh the package lists by hand: {by_hand}") from None
    status = _run(_apt_command(prefix, apt_get, "update", "-q"), env, log)
    if status != 0:
        raise StackError(f"apt-get update failed (exit status {status}); check its output above and the APT sources")


def _which(program: str, env: Mapping[str, str]) -> str | None:
    return shutil.which(program, path=env.get("PATH", os.defpath))


def _apt_command(prefix: list[str], apt_get: str, *arguments: str) -> list[str]:
    return [*prefix, _ENV, "DEBIAN_FRONTEND=noninteractive", apt_get, *arguments]


def _run(command: list[str], env: dict[str, str], log: Log) -> int:
    log("running: " + " ".join(command))
    sys.stderr.flush()
    try:
        # File descriptor 2 is standard error, which receives apt-get's output as well.
        return subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, stdout=2, stderr=2, timeout=APT_TIMEOUT, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        raise StackError(
            f"{' '.join(command)} timed out after {APT_TIMEOUT:.0f} s; "
            "the output above shows its last step"
        ) from None
    except OSError as error:
        raise StackError(f"running {command[0]} failed: {error}") from None


def main(argv: Sequence[str]) -> int:
    """Run `apt-install PACKAGE...` or `apt-install --update` for the shell scripts."""
    arguments = list(argv)
    usage = "usage: scripts/lib/apt-install PACKAGE... | scripts/lib/apt-install --update"
    if arguments in (["-h"], ["--help"]):
        print(usage)
        return 0
    try:
        if arguments == ["--update"]:
            update()
        elif arguments and not any(argument.startswith("-") for argument in arguments):
            install(arguments)
        else:
            print(usage, file=sys.stderr)
            return 2
    except StackError as error:
        print(f"apt-install: error: {error}", file=sys.stderr)
        return 1
    return 0
