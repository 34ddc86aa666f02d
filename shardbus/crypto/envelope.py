"""Seal messages to a public key with HPKE (RFC 9180) in base mode.

Two suites are offered, named by their KEM:

* ``x25519``: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
* ``mlkem768-x25519``: the ML-KEM-768 + X25519 hybrid KEM (X-Wing, HPKE KEM
  id 0x647A), HKDF-SHA256, AES-256-GCM. It stays confidential while either
  ML-KEM-768 or X25519 is unbroken. So recorded envelopes stay safe from a
  future quantum computer as long as ML-KEM-768 holds.

Envelope format: a version byte (1), a suite byte (1 = x25519,
2 = mlkem768-x25519), then the single-shot HPKE output, the encapsulated key
followed by the ciphertext. The caller's `info` goes into the HPKE key
schedule unchanged. So an envelope opens only with the same `info`, and
callers put the ids it is for there (operation id, holder id, index).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from shardbus.errors import DecodeError, IntegrityError

ENVELOPE_VERSION = 1
KEM_X25519 = "x25519"
KEM_MLKEM768_X25519 = "mlkem768-x25519"

_SEED_LENGTH = 32
_MLKEM768_PUBLIC_LENGTH = 1184
_X25519_LENGTH = 32


@dataclass(frozen=True)
class _SuiteSpec:
    suite_byte: int
    kem: hpke.KEM
    public_key_length: int


_SUITES = {
    KEM_X25519: _SuiteSpec(1, hpke.KEM.X25519, _X25519_LENGTH),
    KEM_MLKEM768_X25519: _SuiteSpec(2, hpke.KEM.MLKEM768_X25519, _MLKEM768_PUBLIC_LENGTH + _X25519_LENGTH),
}
_KEM_BY_SUITE_BYTE = {spec.suite_byte: name for name, spec in _SUITES.items()}

#: The KEM names `EnvelopeKeyPair.generate` accepts.
KEMS = tuple(_SUITES)


def _spec(kem: str) -> _SuiteSpec:
    try:
        return _SUITES[kem]
    except (KeyError, TypeError):
        raise ValueError(f"kem must be one of {KEMS}, got {kem!r}") from None


def hpke_suite(kem: str) -> hpke.Suite:
    """Return the HPKE suite used for envelopes with this KEM."""
    return hpke.Suite(_spec(kem).kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _expand_hybrid_seed(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    # X-Wing's private key is a 32-byte seed. SHAKE256 expands it to 96
    # bytes: a 64-byte ML-KEM-768 seed (d || z), then the X25519 private key.
    # tests/core/test_envelope.py checks this against the HPKE-PQ vectors.
    shake = hashes.Hash(hashes.SHAKE256(96))
    shake.update(seed)
    expanded = shake.finalize()
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    x25519_key = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    return mlkem_key, x25519_key


class PublicKey:
    """A recipient's public key for one KEM."""

    __slots__ = ("kem", "_key", "_raw")

    def __init__(self, kem: str, key: object, raw: bytes) -> None:
        self.kem = kem
        self._key = key
        self._raw = raw

    @classmethod
    def from_bytes(cls, kem: str, data: bytes) -> PublicKey:
        """Load a raw public key: 32 bytes for x25519, 1216 for mlkem768-x25519.

        The hybrid key is the ML-KEM-768 encapsulation key followed by the
        X25519 public key, as in X-Wing.
        """
        spec = _spec(kem)
        data = bytes(data)
        if len(data) != spec.public_key_length:
            raise DecodeError(f"{kem} public key must be {spec.public_key_length} bytes, got {len(data)}")
        try:
            if kem == KEM_X25519:
                key: object = x25519.X25519PublicKey.from_public_bytes(data)
            else:
                key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM768_PUBLIC_LENGTH]),
                    x25519.X25519PublicKey.from_public_bytes(data[_MLKEM768_PUBLIC_LENGTH:]),
                )
        except ValueError:
            raise DecodeError(f"{kem} public key is malformed") from None
        return cls(kem, key, data)

    def to_bytes(self) -> bytes:
        """Return the raw public key, the form `from_bytes` reads."""
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.kem == other.kem and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((self.kem, self._raw))

    def __repr__(self) -> str:
        return f"PublicKey(kem={self.kem!r}, key={self._raw[:8].hex()}...)"


class EnvelopeKeyPair:
    """A recipient's private key and its public key.

    The private key is a 32-byte seed for both KEMs: the X25519 private key
    itself, or the X-Wing seed of the hybrid key. It never appears in `repr`.
    """

    __slots__ = ("kem", "public_key", "_private", "_seed")

    def __init__(self, kem: str, seed: bytes) -> None:
        _spec(kem)
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != _SEED_LENGTH:
            raise ValueError(f"{kem} private key must be {_SEED_LENGTH} bytes")
        self.kem = kem
        self._seed = bytes(seed)
        private: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
        if kem == KEM_X25519:
            private = x25519.X25519PrivateKey.from_private_bytes(self._seed)
            raw_public = private.public_key().public_bytes_raw()
        else:
            # The hybrid key object does not expose its parts, so the public
            # bytes come from the parts before they are combined.
            mlkem_key, x25519_key = _expand_hybrid_seed(self._seed)
            private = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
            raw_public = (
                mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
            )
        self._private = private
        self.public_key = PublicKey(kem, private.public_key(), raw_public)

    @classmethod
    def generate(
        cls, kem: str = KEM_X25519, *, randbytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> EnvelopeKeyPair:
        """Return a new key pair; `randbytes` must be a CSPRNG outside tests."""
        _spec(kem)
        return cls(kem, randbytes(_SEED_LENGTH))

    @classmethod
    def from_private_bytes(cls, kem: str, data: bytes) -> EnvelopeKeyPair:
        """Load a key pair from the 32-byte private key."""
        return cls(kem, data)

    def private_bytes(self) -> bytes:
        """Return the 32-byte private key. Handle it like any other secret."""
        return self._seed

    def public_bytes(self) -> bytes:
        """Return the raw public key, for `PublicKey.from_bytes`."""
        return self.public_key.to_bytes()

    def __repr__(self) -> str:
        return f"EnvelopeKeyPair(kem={self.kem!r}, public_key={self.public_key!r})"


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def seal(public_key: PublicKey, plaintext: bytes, *, info: bytes) -> bytes:
    """Encrypt `plaintext` to `public_key`, bound to `info`.

    Raises DecodeError for a public key that key agreement rejects.
    """
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"public_key must be an envelope PublicKey, got {type(public_key).__name__}")
    plaintext = _check_bytes("plaintext", plaintext)
    info = _check_bytes("info", info)
    header = bytes([ENVELOPE_VERSION, _SUITES[public_key.kem].suite_byte])
    try:
        sealed = hpke_suite(public_key.kem).encrypt(plaintext, public_key._key, info=info)
    except ValueError:
        # OpenSSL rejects an X25519 public key of small order, such as all zeros.
        raise DecodeError(f"cannot seal to this {public_key.kem} public key: key agreement failed") from None
    return header + sealed


def open_(key_pair: EnvelopeKeyPair, envelope: bytes, *, info: bytes) -> bytes:
    """Decrypt an envelope sealed to `key_pair`'s public key with the same `info`.

    Raises:
        DecodeError: the envelope is too short or names an unknown version or suite.
        IntegrityError: the envelope is for another key or suite, `info`
            differs, or any byte was changed.
    """
    if not isinstance(key_pair, EnvelopeKeyPair):
        raise TypeError(f"key_pair must be an EnvelopeKeyPair, got {type(key_pair).__name__}")
    envelope = _check_bytes("envelope", envelope)
    info = _check_bytes("info", info)
    if len(envelope) < 2:
        raise DecodeError(f"envelope must be at least 2 bytes, got {len(envelope)}")
    if envelope[0] != ENVELOPE_VERSION:
        raise DecodeError(f"envelope has version {envelope[0]}, expected {ENVELOPE_VERSION}")
    kem = _KEM_BY_SUITE_BYTE.get(envelope[1])
    if kem is None:
        raise DecodeError(f"envelope names unknown suite {envelope[1]}, expected one of {sorted(_KEM_BY_SUITE_BYTE)}")
    if kem != key_pair.kem:
        raise IntegrityError()
    try:
        return hpke_suite(kem).decrypt(envelope[2:], key_pair._private, info=info)
    except (InvalidTag, ValueError):
        raise IntegrityError() from None
