"""Replay the known-answer vectors in tests/vectors (made by make_vectors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from shamir_mnemonic.shamir import RawShare, _interpolate

from shardbus import errors
from shardbus.crypto import aead
from shardbus.crypto.keys import MasterKey
from shardbus.sharing import shamir
from shardbus.sharing.fragment import Fragment
from shardbus.sharing.fragmentation import Policy, combine_fragments, split_secret

VECTORS = Path(__file__).parents[1] / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


class ReplayRandom:
    """Hands out recorded random bytes in order and checks that all were used."""

    def __init__(self, recorded_hex: str) -> None:
        self._data = bytes.fromhex(recorded_hex)
        self._offset = 0

    def randbytes(self, count: int) -> bytes:
        chunk = self._data[self._offset : self._offset + count]
        assert len(chunk) == count, "the split asked for more randomness than the vector recorded"
        self._offset += count
        return chunk

    def assert_used_up(self) -> None:
        assert self._offset == len(self._data), "the split used less randomness than the vector recorded"


SHAMIR = load("shamir")
FRAGMENTATION = load("fragmentation")
KEYS = load("keys")


def numbered(vector: dict) -> str:
    return f"vector-{vector['number']}"


@pytest.mark.parametrize("vector", SHAMIR["valid"], ids=numbered)
def test_shamir_split_reproduces_shares(vector):
    random = ReplayRandom(vector["randomness"])
    shares = shamir.split(
        bytes.fromhex(vector["secret"]), vector["threshold"], vector["count"], randbytes=random.randbytes
    )
    random.assert_used_up()
    assert [{"x": share.x, "y": share.y.hex()} for share in shares] == vector["shares"]


@pytest.mark.parametrize("vector", SHAMIR["valid"], ids=numbered)
def test_shamir_combine_recovers_secret(vector):
    shares = [shamir.Share(share["x"], bytes.fromhex(share["y"])) for share in vector["shares"]]
    threshold = vector["threshold"]
    assert shamir.combine(shares[:threshold], threshold).hex() == vector["secret"]
    assert shamir.combine(shares[-threshold:], threshold).hex() == vector["secret"]


@pytest.mark.parametrize("vector", SHAMIR["valid"], ids=numbered)
def test_shamir_vectors_match_shamir_mnemonic(vector):
    raw = [RawShare(share["x"], bytes.fromhex(share["y"])) for share in vector["shares"]]
    assert _interpolate(raw[: vector["threshold"]], 0).hex() == vector["secret"]


@pytest.mark.parametrize("vector", SHAMIR["invalid"], ids=numbered)
def test_shamir_invalid_vectors_rejected(vector):
    shares = [shamir.Share(share["x"], bytes.fromhex(share["y"])) for share in vector["shares"]]
    with pytest.raises(getattr(errors, vector["error"]), match=vector["message"]):
        shamir.combine(shares, vector["threshold"])


@pytest.mark.parametrize("vector", FRAGMENTATION["vectors"], ids=numbered)
def test_fragmentation_split_reproduces_fragments(vector):
    random = ReplayRandom(vector["randomness"])
    policy = Policy(vector["fragments"], vector["threshold"], vector["direct_limit"])
    fragment_set = split_secret(
        bytes.fromhex(vector["secret"]),
        policy,
        secret_id=vector["secret_id"],
        version=vector["version"],
        verify_key=bytes.fromhex(vector["verify_key"]),
        randbytes=random.randbytes,
    )
    random.assert_used_up()
    assert [fragment.to_bytes().hex() for fragment in fragment_set.fragments] == vector["encoded_fragments"]
    assert {str(index): value.hex() for index, value in fragment_set.commitments.items()} == vector["commitments"]
    assert fragment_set.digest.hex() == vector["digest"]


@pytest.mark.parametrize("vector", FRAGMENTATION["vectors"], ids=numbered)
def test_fragmentation_combine_recovers_secret(vector):
    fragments = [Fragment.from_bytes(bytes.fromhex(encoded)) for encoded in vector["encoded_fragments"]]
    assert {fragment.scheme for fragment in fragments} == {vector["scheme"]}
    secret = combine_fragments(
        fragments[-vector["threshold"] :],
        threshold=vector["threshold"],
        verify_key=bytes.fromhex(vector["verify_key"]),
        commitments={int(index): bytes.fromhex(value) for index, value in vector["commitments"].items()},
        digest=bytes.fromhex(vector["digest"]),
        secret_id=vector["secret_id"],
        secret_version=vector["version"],
    )
    assert secret.hex() == vector["secret"]


@pytest.mark.parametrize("vector", FRAGMENTATION["vectors"], ids=numbered)
def test_fragmentation_verify_key_derived(vector):
    master = MasterKey.from_text(FRAGMENTATION["master_key"])
    assert master.verify_key(vector["secret_id"], vector["version"]).hex() == vector["verify_key"]


MASTER = MasterKey.from_text(KEYS["master_key"])


@pytest.mark.parametrize("derivation", KEYS["derivations"], ids=lambda d: d["kind"])
def test_key_derivation_known_answer(derivation):
    derive = getattr(MASTER, derivation["kind"])
    assert derive(*derivation["arguments"]).hex() == derivation["key"]


@pytest.mark.parametrize("derivation", KEYS["derivations"], ids=lambda d: d["kind"])
def test_key_derivation_is_plain_hkdf(derivation):
    # Recomputes each key with HKDF-SHA256 from the recorded info bytes, so
    # the info encoding documented in keys.py is checked as well.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=bytes.fromhex(derivation["info"]))
    assert hkdf.derive(MASTER.material).hex() == derivation["key"]


@pytest.mark.parametrize("sealed", KEYS["sealed_fragments"], ids=lambda s: s["ids"]["holder_id"])
def test_sealed_fragment_known_answer(sealed):
    random = ReplayRandom(sealed["randomness"])
    key = bytes.fromhex(sealed["key"])
    blob = aead.seal_fragment(key, bytes.fromhex(sealed["plaintext"]), randbytes=random.randbytes, **sealed["ids"])
    random.assert_used_up()
    assert blob.hex() == sealed["blob"]
    assert aead.open_fragment(key, blob, **sealed["ids"]).hex() == sealed["plaintext"]
