"""HPKE envelopes: RFC 9180 and HPKE-PQ vectors, round trips, and every failure."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke

from shardbus.crypto import envelope
from shardbus.crypto.envelope import EnvelopeKeyPair, PublicKey
from shardbus.errors import DecodeError, IntegrityError

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "hpke.json").read_text())["vectors"]
AEADS = {1: hpke.AEAD.AES_128_GCM, 2: hpke.AEAD.AES_256_GCM, 3: hpke.AEAD.CHACHA20_POLY1305}
KEMS = {"x25519": hpke.KEM.X25519, "mlkem768-x25519": hpke.KEM.MLKEM768_X25519}


def decrypt_with_aad(suite, ciphertext, private_key, info, aad):
    # The vectors' first encryption has non-empty associated data. The
    # single-shot API of cryptography 48 takes none, so use its private
    # helper. The main branch of pyca/cryptography takes `aad=` on decrypt.
    try:
        return suite.decrypt(ciphertext, private_key, info=info, aad=aad)
    except TypeError:
        return rust_openssl.hpke._decrypt_with_aad(suite, ciphertext, private_key, info=info, aad=aad)


def vector_id(vector):
    return f"{vector['kem']}-aead{vector['aead_id']}"


def test_vectors_cover_both_kems():
    assert {vector["kem"] for vector in VECTORS} == set(envelope.KEMS)
    assert any(vector["kem"] == "x25519" and vector["aead_id"] == 2 for vector in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_vector_private_key_gives_public_key(vector):
    # For the hybrid KEM this checks the X-Wing seed expansion.
    key_pair = EnvelopeKeyPair.from_private_bytes(vector["kem"], bytes.fromhex(vector["skRm"]))
    assert key_pair.public_bytes().hex() == vector["pkRm"]


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_vector_decrypts(vector):
    key_pair = EnvelopeKeyPair.from_private_bytes(vector["kem"], bytes.fromhex(vector["skRm"]))
    suite = hpke.Suite(KEMS[vector["kem"]], hpke.KDF.HKDF_SHA256, AEADS[vector["aead_id"]])
    plaintext = decrypt_with_aad(
        suite,
        bytes.fromhex(vector["enc"] + vector["ct"]),
        key_pair._private,
        bytes.fromhex(vector["info"]),
        bytes.fromhex(vector["aad"]),
    )
    assert plaintext.hex() == vector["pt"]


def test_vector_decrypts_with_envelope_suite():
    # The x25519 envelope suite is exactly RFC 9180 suite (0x0020, 0x0001, 0x0002).
    vector = next(v for v in VECTORS if v["kem"] == "x25519" and v["aead_id"] == 2)
    key_pair = EnvelopeKeyPair.from_private_bytes("x25519", bytes.fromhex(vector["skRm"]))
    plaintext = decrypt_with_aad(
        envelope.hpke_suite("x25519"),
        bytes.fromhex(vector["enc"] + vector["ct"]),
        key_pair._private,
        bytes.fromhex(vector["info"]),
        bytes.fromhex(vector["aad"]),
    )
    assert plaintext.hex() == vector["pt"]


@pytest.mark.parametrize("kem", envelope.KEMS)
def test_round_trip(kem):
    key_pair = EnvelopeKeyPair.generate(kem)
    public_key = PublicKey.from_bytes(kem, key_pair.public_bytes())
    sealed = envelope.seal(public_key, b"fragment bytes", info=b"op-1/holder-2/3")
    assert sealed[:2] == bytes([1, 1 if kem == "x25519" else 2])
    assert envelope.open_(key_pair, sealed, info=b"op-1/holder-2/3") == b"fragment bytes"


@pytest.mark.parametrize("kem", envelope.KEMS)
def test_private_bytes_round_trip(kem):
    key_pair = EnvelopeKeyPair.generate(kem)
    again = EnvelopeKeyPair.from_private_bytes(kem, key_pair.private_bytes())
    assert again.public_key == key_pair.public_key
    sealed = envelope.seal(key_pair.public_key, b"x", info=b"")
    assert envelope.open_(again, sealed, info=b"") == b"x"


def test_generate_uses_randbytes():
    first = EnvelopeKeyPair.generate("mlkem768-x25519", randbytes=random.Random(3).randbytes)
    second = EnvelopeKeyPair.generate("mlkem768-x25519", randbytes=random.Random(3).randbytes)
    assert first.public_bytes() == second.public_bytes()
    assert len(first.public_bytes()) == 1216


@pytest.mark.parametrize("kem", envelope.KEMS)
def test_wrong_info_fails(kem):
    key_pair = EnvelopeKeyPair.generate(kem)
    sealed = envelope.seal(key_pair.public_key, b"payload", info=b"holder-1")
    with pytest.raises(IntegrityError):
        envelope.open_(key_pair, sealed, info=b"holder-2")


@pytest.mark.parametrize("kem", envelope.KEMS)
def test_every_tampered_byte_fails(kem):
    key_pair = EnvelopeKeyPair.generate(kem)
    sealed = envelope.seal(key_pair.public_key, b"payload", info=b"i")
    positions = range(2, len(sealed)) if kem == "x25519" else range(2, len(sealed), 37)
    for position in positions:
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            envelope.open_(key_pair, bytes(damaged), info=b"i")


def test_wrong_key_fails():
    sealed = envelope.seal(EnvelopeKeyPair.generate().public_key, b"payload", info=b"")
    with pytest.raises(IntegrityError):
        envelope.open_(EnvelopeKeyPair.generate(), sealed, info=b"")


def test_suite_byte_swapped_fails():
    key_pair = EnvelopeKeyPair.generate("x25519")
    sealed = envelope.seal(key_pair.public_key, b"payload", info=b"")
    with pytest.raises(IntegrityError):
        envelope.open_(key_pair, sealed[:1] + b"\x02" + sealed[2:], info=b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01", "at least 2 bytes, got 1"),
        (b"\x02\x01" + bytes(60), "version 2, expected 1"),
        (b"\x01\x09" + bytes(60), "unknown suite 9"),
    ],
)
def test_malformed_envelope_rejected(data, message):
    with pytest.raises(DecodeError, match=message):
        envelope.open_(EnvelopeKeyPair.generate(), data, info=b"")


def test_truncated_envelope_fails():
    key_pair = EnvelopeKeyPair.generate("mlkem768-x25519")
    sealed = envelope.seal(key_pair.public_key, b"payload", info=b"")
    for length in (2, 40, 1000, len(sealed) - 1):
        with pytest.raises(IntegrityError):
            envelope.open_(key_pair, sealed[:length], info=b"")


@pytest.mark.parametrize(("kem", "length"), [("x25519", 31), ("mlkem768-x25519", 1215), ("x25519", 33)])
def test_public_key_length_checked(kem, length):
    with pytest.raises(DecodeError, match=f"{kem} public key must be"):
        PublicKey.from_bytes(kem, bytes(length))


def test_malformed_hybrid_public_key_rejected():
    with pytest.raises(DecodeError, match="malformed"):
        PublicKey.from_bytes("mlkem768-x25519", b"\xff" * 1216)


def test_low_order_x25519_key_rejected():
    with pytest.raises(DecodeError, match="key agreement failed"):
        envelope.seal(PublicKey.from_bytes("x25519", bytes(32)), b"x", info=b"")


def test_unknown_kem_rejected():
    with pytest.raises(ValueError, match="kem must be one of"):
        EnvelopeKeyPair.generate("p256")


def test_info_must_be_bytes():
    with pytest.raises(TypeError, match="info must be bytes"):
        envelope.seal(EnvelopeKeyPair.generate().public_key, b"x", info="text")


def test_repr_hides_private_key():
    key_pair = EnvelopeKeyPair.generate(randbytes=lambda n: b"\xab" * n)
    assert "abab" not in repr(key_pair)
    assert repr(key_pair).startswith("EnvelopeKeyPair(kem='x25519', public_key=PublicKey(")
