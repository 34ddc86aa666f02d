"""Tell a supervisor that a service has started and subscribed.

A supervisor (the demo, the tests, a process manager) sets SHARDBUS_READY_FILE
to a path; the service creates that file once it consumes its topics. A
service started without the variable does nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

READY_FILE_ENV = "SHARDBUS_READY_FILE"


def mark_ready() -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
