"""The exception hierarchy shared by every part of shardbus.

    ShardbusError
    ├── DecodeError            untrusted bytes that are not a valid message or blob
    ├── IntegrityError         an authenticity check failed (opaque on purpose)
    ├── CombineError           fragments that cannot be combined into a secret
    │   └── FragmentCorrupted  one named fragment failed its commitment
    ├── ConfigError            a missing or invalid setting, key file or policy
    ├── Denied                 a request the authorizer rejected
    └── ServiceUnavailable     Kafka, Redis or a holder did not answer (retriable)

Caller mistakes (a threshold of 1, a negative size) raise ValueError or
TypeError as usual. Messages name fields and public ids, never secret bytes,
fragments or keys.
"""

from __future__ import annotations


class ShardbusError(Exception):
    """Base class of every error shardbus raises on purpose."""

    #: True when the same call may succeed if tried again later.
    retriable: bool = False


class DecodeError(ShardbusError):
    """Untrusted input that is not a valid shardbus message or stored blob."""


class IntegrityError(ShardbusError):
    """An authenticity check failed.

    Deliberately says nothing about which check failed (tag, signature,
    associated data), so an attacker learns nothing from the message.
    """

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class CombineError(ShardbusError):
    """Fragments that cannot be combined into a secret."""


class FragmentCorrupted(CombineError):
    """A fragment that does not match its commitment."""

    def __init__(self, index: int, holder_id: str | None = None) -> None:
        self.index = index
        self.holder_id = holder_id
        where = f" from holder {holder_id}" if holder_id else ""
        super().__init__(f"fragment {index}{where} does not match its commitment")


class ConfigError(ShardbusError):
    """A missing or invalid setting, key file or policy file."""


class Denied(ShardbusError):
    """A request the authorizer rejected; `reason` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ServiceUnavailable(ShardbusError):
    """Kafka, Redis or a holder did not answer in time."""

    retriable = True
