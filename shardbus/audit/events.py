"""Signing and checking LifecycleEvents with the deployment's audit key.

A LifecycleEvent makes the provisioner act: ``holders_released`` and
``operation_completed`` tear holders down, and ``holder_failed`` makes the
authorizer's repair place a fragment on a new holder. Any service principal
may write ``{p}.lifecycle``, so the topic's ACLs alone cannot tell which
service sent an event. Each sender therefore signs its events with
``audit.key``, which every service and the controller already have to sign
their audit records, and the consumers that act on events verify the
signature with the matching public key before acting.

The signature covers ``LifecycleEvent.signing_bytes()``: a label of its own
and the canonical encoding of every other field, so an audit record's
signature never verifies as an event's. It proves that a holder of the audit
key sent the event, not which of them: a compromised service that has
``audit.key`` can still sign any event.
"""

from __future__ import annotations

import dataclasses

from schemas.holders import LifecycleEvent
from shardbus.crypto.signing import SigningKey, VerifyKey, sign, verify

__all__ = ["sign_event", "verify_event"]


def sign_event(event: LifecycleEvent, key: SigningKey) -> LifecycleEvent:
    """Return `event` with its signature by `key` set; a signature it had is replaced."""
    if not isinstance(event, LifecycleEvent):
        raise TypeError(f"event must be a LifecycleEvent, got {type(event).__name__}")
    return dataclasses.replace(event, signature=sign(key, event.signing_bytes()))


def verify_event(event: LifecycleEvent, key: VerifyKey) -> None:
    """Raise IntegrityError unless `event` carries a valid signature by the audit key `key`.

    An event without a signature fails like an event with a wrong one.
    """
    if not isinstance(event, LifecycleEvent):
        raise TypeError(f"event must be a LifecycleEvent, got {type(event).__name__}")
    verify(key, event.signing_bytes(), event.signature)
