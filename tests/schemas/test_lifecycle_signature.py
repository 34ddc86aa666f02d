"""Signing LifecycleEvents with the audit key, and what verification rejects."""

from __future__ import annotations

import dataclasses

import pytest

from schemas import codec
from schemas.base import pack_canonical
from schemas.holders import LIFECYCLE_SIGNATURE_LABEL, EventKind, LifecycleEvent
from shardbus.audit import chain
from shardbus.audit.events import sign_event, verify_event
from shardbus.crypto.signing import SigningKey, sign
from shardbus.errors import DecodeError, IntegrityError

AUDIT_KEY = SigningKey.from_bytes(bytes(range(32)))
OTHER_KEY = SigningKey.from_bytes(bytes(range(1, 33)))


def released(**changes: object) -> LifecycleEvent:
    fields: dict[str, object] = dict(
        event=EventKind.HOLDERS_RELEASED, at_ms=1_700_000_000_000, holder_id="", operation_id="",
        secret_name="db/pw", secret_version=2, detail="fragments destroyed", holders=("h1", "h2"),
    )
    fields.update(changes)
    return LifecycleEvent(**fields)


def test_signed_event_round_trips() -> None:
    event = sign_event(released(), AUDIT_KEY)

    decoded = codec.decode(codec.encode(event), LifecycleEvent)

    assert decoded == event
    verify_event(decoded, AUDIT_KEY.verify_key)


def test_signing_bytes_omit_signature() -> None:
    event = released()
    signed = sign_event(event, AUDIT_KEY)

    assert signed.signing_bytes() == event.signing_bytes()
    assert event.signing_bytes().startswith(LIFECYCLE_SIGNATURE_LABEL)


@pytest.mark.parametrize(
    "change",
    [
        {"event": EventKind.OPERATION_COMPLETED},
        {"holders": ("h1", "h2", "h3")},
        {"secret_version": 3},
        {"operation_id": "0" * 32},
        {"at_ms": 1_700_000_000_001},
        {"detail": "fragments destroyed!"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_tampered_field_is_rejected(change: dict[str, object]) -> None:
    tampered = dataclasses.replace(sign_event(released(), AUDIT_KEY), **change)

    with pytest.raises(IntegrityError):
        verify_event(tampered, AUDIT_KEY.verify_key)


def test_signature_by_another_key_is_rejected() -> None:
    with pytest.raises(IntegrityError):
        verify_event(sign_event(released(), OTHER_KEY), AUDIT_KEY.verify_key)


def test_missing_signature_is_rejected() -> None:
    with pytest.raises(IntegrityError):
        verify_event(released(), AUDIT_KEY.verify_key)
    with pytest.raises(ValueError, match="LifecycleEvent.signature: expected a 64-byte Ed25519 signature"):
        codec.encode(released())


def test_unsigned_event_does_not_decode() -> None:
    wire = released().to_wire()
    data = pack_canonical(wire)

    with pytest.raises(DecodeError, match="LifecycleEvent.signature: expected a 64-byte Ed25519 signature"):
        codec.decode(data, LifecycleEvent)


def test_event_without_the_signature_field_does_not_decode() -> None:
    wire = sign_event(released(), AUDIT_KEY).to_wire()
    del wire["signature"]

    with pytest.raises(DecodeError, match="LifecycleEvent.signature: expected the field to be present"):
        codec.decode(pack_canonical(wire), LifecycleEvent)


def test_audit_signature_rejected_for_event() -> None:
    # The label keeps the two uses of the audit key apart: the bare canonical
    # encoding, as an audit record's signature covers it after its own label,
    # signed by the right key, is still rejected.
    event = released()
    wire = event.to_wire()
    del wire["signature"]
    forged = dataclasses.replace(event, signature=sign(AUDIT_KEY, chain.SIGNATURE_CONTEXT + pack_canonical(wire)))

    with pytest.raises(IntegrityError):
        verify_event(forged, AUDIT_KEY.verify_key)


def test_sign_event_rejects_other_messages() -> None:
    with pytest.raises(TypeError, match="event must be a LifecycleEvent"):
        sign_event(object(), AUDIT_KEY)  # type: ignore[arg-type]
