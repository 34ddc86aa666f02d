"""The console logs of microVM holders: their last lines for diagnosis, and their removal.

QEMU writes each guest's serial console to ``<log dir>/<holder id>.log``
while the VM runs. The console carries the guest kernel's messages, the
guest init's messages and the holder's log records. The holder logs ids,
indexes and counts, never fragment, key or secret bytes, as no log line or
message of the project does. The guest init copies the TLS files from the
control port to a tmpfs with ``dd status=none``, so they never reach the
console either. The end-to-end test checks that no console contains the
secret.

NOTE: a guest kernel oops prints the CPU registers, which may hold bytes
of whatever the guest was working on when it crashed. Nothing filters them
from the console.

When the backend stops a VM it deletes the console log, so that a stopped
holder leaves no file on the host. When the VM failed (it exited before it
was asked to stop, never reported its key or ignored the stop request),
the last lines go to the provisioner's log first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Console lines copied into the provisioner's log when a VM fails.
TAIL_LINES = 20
#: The tail is taken from at most this many bytes at the end of the console,
#: and each line is cut at `_LINE_CHARS` characters.
_TAIL_BYTES = 8192
_LINE_CHARS = 400


def console_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """Return the last `lines` non-empty lines of a console log, or [] when it cannot be read.

    Characters that a terminal would interpret, escape sequences included,
    are replaced with "?", so a guest cannot forge lines in the
    provisioner's log.
    """
    if lines < 1:
        raise ValueError(f"lines must be at least 1, got {lines}")
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - _TAIL_BYTES))
            data = file.read(_TAIL_BYTES)
    except OSError:
        return []
    text_lines = data.decode("utf-8", errors="replace").splitlines()
    if size > _TAIL_BYTES and text_lines:
        # The read started inside a line, so the first one is incomplete.
        text_lines = text_lines[1:]
    cleaned = []
    for line in text_lines:
        printable = "".join(character if character.isprintable() else "?" for character in line.expandtabs())
        if printable.strip():
            cleaned.append(printable[:_LINE_CHARS])
    return cleaned[-lines:]


def discard_console(
    console: Path, name: str, failure: str | None, *, keep: bool = False, level: int = logging.WARNING,
) -> None:
    """Delete the console log of the VM `name`, first logging its last lines when `failure` is set.

    `failure` completes the sentence "microVM <name> ...". With `keep`, the
    file stays for debugging (``--vm-keep-console``).
    """
    if failure is not None:
        tail = console_tail(console)
        if tail:
            log.log(level, "microVM %s %s; the last %d lines of its console %s:\n%s",
                    name, failure, len(tail), console, "\n".join(f"    | {line}" for line in tail))
        else:
            log.log(level, "microVM %s %s; its console %s is empty or missing", name, failure, console)
    if keep:
        return
    try:
        console.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete the console log %s of microVM %s: %s", console, name, exc)
