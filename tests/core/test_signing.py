"""Ed25519 keys: round trips, text and PEM forms, and tampering."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives import serialization

from shardbus.crypto import signing
from shardbus.crypto.signing import SigningKey, VerifyKey
from shardbus.errors import DecodeError, IntegrityError

# RFC 8032 section 7.1, TEST 2: a one-byte message.
RFC8032_SECRET = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC8032_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC8032_MESSAGE = bytes.fromhex("72")
RFC8032_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_rfc8032_known_answer():
    key = SigningKey.from_bytes(RFC8032_SECRET)
    assert key.verify_key.to_bytes() == RFC8032_PUBLIC
    assert signing.sign(key, RFC8032_MESSAGE) == RFC8032_SIGNATURE
    signing.verify(VerifyKey.from_bytes(RFC8032_PUBLIC), RFC8032_MESSAGE, RFC8032_SIGNATURE)


def test_sign_verify_round_trip():
    key = SigningKey.generate()
    signature = signing.sign(key, b"canonical request bytes")
    assert len(signature) == 64
    signing.verify(key.verify_key, b"canonical request bytes", signature)


def test_tampered_message_fails():
    key = SigningKey.generate()
    signature = signing.sign(key, b"lease db/password")
    with pytest.raises(IntegrityError):
        signing.verify(key.verify_key, b"lease db/passwore", signature)


def test_tampered_signature_fails():
    key = SigningKey.generate()
    signature = bytearray(signing.sign(key, b"message"))
    signature[10] ^= 0x01
    with pytest.raises(IntegrityError):
        signing.verify(key.verify_key, b"message", bytes(signature))


@pytest.mark.parametrize("length", [0, 63, 65])
def test_wrong_length_signature_fails(length):
    key = SigningKey.generate()
    with pytest.raises(IntegrityError):
        signing.verify(key.verify_key, b"message", bytes(length))


def test_other_key_fails():
    signature = signing.sign(SigningKey.generate(), b"message")
    with pytest.raises(IntegrityError):
        signing.verify(SigningKey.generate().verify_key, b"message", signature)


def test_verify_key_text_round_trip():
    key = SigningKey.from_bytes(RFC8032_SECRET).verify_key
    text = key.to_text()
    assert text == "ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw="
    assert VerifyKey.from_text(text) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=", "must have the form 'ed25519:"),
        ("ed25519:not base64!", "not valid base64"),
        ("ed25519:AAAA", "must be 32 bytes, got 3"),
    ],
)
def test_verify_key_text_rejects_invalid(text, message):
    with pytest.raises(DecodeError, match=message):
        VerifyKey.from_text(text)


def test_verify_key_pem_round_trip():
    key = SigningKey.generate().verify_key
    assert VerifyKey.from_pem(key.to_pem()) == key


def test_verify_key_pem_rejects_other_algorithms():
    pem = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(DecodeError, match="must be an Ed25519 key"):
        VerifyKey.from_pem(pem)
    with pytest.raises(DecodeError, match="not a valid PEM"):
        VerifyKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_signing_key_pem_round_trip():
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.to_pem())
    assert again.private_bytes() == key.private_bytes()
    assert again.verify_key == key.verify_key


def test_signing_key_bytes_round_trip():
    key = SigningKey.generate(randbytes=lambda n: b"\x11" * n)
    assert key.private_bytes() == b"\x11" * 32
    assert SigningKey.from_bytes(key.private_bytes()).verify_key == key.verify_key


def test_signing_key_repr_hides_private_bytes():
    key = SigningKey.from_bytes(RFC8032_SECRET)
    assert RFC8032_SECRET.hex() not in repr(key)
    assert repr(key) == "SigningKey(verify_key='ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=')"

