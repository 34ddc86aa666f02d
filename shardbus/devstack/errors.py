"""The one error the development stack raises on purpose."""

from __future__ import annotations

from shardbus.errors import ShardbusError


class StackError(ShardbusError):
    """A stack service could not be fetched, started, checked or stopped.

    The message names the service, its port or file, and what to do next; the
    command line prints it and exits with status 1.
    """
