"""Split a secret into committed fragments and combine them again.

Two schemes, chosen by the secret's size (see `Policy.direct_limit`):

* ``shamir``: a secret of at most `direct_limit` bytes is Shamir-shared
  directly, so each fragment is as large as the secret.
* ``krawczyk``: a larger secret is encrypted with AES-256-GCM under a fresh
  32-byte data key, the data key is Shamir-shared and the ciphertext is
  dispersed with Rabin's IDA. Each fragment is then a 32-byte key share
  plus about (|S| + 28) / k bytes of ciphertext, instead of |S| bytes
  (H. Krawczyk, "Secret Sharing Made Short", CRYPTO 1993). The secrecy
  rests on AES-256-GCM rather than on information theory.

Every split also yields a commitment per fragment and a digest of the secret,
both HMAC-SHA256 under a verify key (`MasterKey.verify_key` derives it for
one secret version). The commitments let a combiner name a corrupted fragment
instead of producing a wrong secret, and the digest checks the result. They
are keyed hashes: only holders of the verify key can check them, unlike
Feldman or Pedersen commitments, which anyone can verify.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shardbus.crypto.encoding import encode_fields
from shardbus.errors import CombineError, FragmentCorrupted, IntegrityError
from shardbus.sharing import ida, shamir
from shardbus.sharing.fragment import (
    DATA_KEY_LENGTH,
    NONCE_LENGTH,
    SCHEME_KRAWCZYK,
    MAX_SECRET_LENGTH,
    SCHEME_SHAMIR,
    Fragment,
    dispersed_length,
    payload_length,
    validate_ids,
)

_COMMITMENT_LABEL = "shardbus/v1/fragment-commitment"
_DIGEST_LABEL = "shardbus/v1/secret-digest"
_DATA_KEY_AAD_LABEL = "shardbus/v1/krawczyk-ciphertext"

#: Size of a commitment and of the secret digest (HMAC-SHA256).
MAC_LENGTH = 32

# The fields that every fragment of one secret version has in common.
_SHARED_FIELDS = ("scheme", "secret_id", "secret_version", "threshold", "count", "secret_length")


@dataclass(frozen=True)
class Policy:
    """How to split a secret: `threshold` of `fragments` recover it.

    Secrets of at most `direct_limit` bytes use plain Shamir, and larger ones
    use the krawczyk scheme.
    """

    fragments: int
    threshold: int
    direct_limit: int = 1024

    def __post_init__(self) -> None:
        for name in ("fragments", "threshold", "direct_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Policy.{name} must be an int, got {type(value).__name__}")
        if not 2 <= self.threshold <= shamir.MAX_SHARES:
            raise ValueError(f"Policy.threshold must be in 2..{shamir.MAX_SHARES}, got {self.threshold}")
        if not self.threshold <= self.fragments <= shamir.MAX_SHARES:
            raise ValueError(
                f"Policy.fragments must be in {self.threshold}..{shamir.MAX_SHARES} "
                f"(at least the threshold), got {self.fragments}"
            )
        if self.direct_limit < 0:
            raise ValueError(f"Policy.direct_limit must be >= 0, got {self.direct_limit}")

    @property
    def redundancy(self) -> int:
        """The number of fragments that may be lost while the secret stays recoverable."""
        return self.fragments - self.threshold

    def scheme_for(self, secret_length: int) -> str:
        """Return the scheme used for a secret of `secret_length` bytes."""
        return SCHEME_SHAMIR if secret_length <= self.direct_limit else SCHEME_KRAWCZYK

    def fragment_size(self, secret_length: int) -> int:
        """Return the payload size in bytes of each fragment of a `secret_length`-byte secret.

        Under the shamir scheme a fragment is as large as the secret. Under
        the krawczyk scheme it is a 32-byte key share plus
        ceil((secret_length + 28) / threshold) bytes of nonce and ciphertext.
        `Fragment.to_bytes` adds the other fields to this: 108 to 133 bytes
        plus the secret id's UTF-8 bytes.
        """
        if not isinstance(secret_length, int) or isinstance(secret_length, bool):
            raise TypeError(f"secret_length must be an int, got {type(secret_length).__name__}")
        if not 1 <= secret_length <= MAX_SECRET_LENGTH:
            raise ValueError(f"secret_length must be in 1..{MAX_SECRET_LENGTH}, got {secret_length}")
        return payload_length(self.scheme_for(secret_length), secret_length, self.threshold)


@dataclass(frozen=True)
class FragmentSet:
    """The result of a split: fragments, their commitments and the secret's digest.

    `commitments` maps each fragment index to its commitment.
    """

    fragments: tuple[Fragment, ...]
    commitments: Mapping[int, bytes]
    digest: bytes

    def __repr__(self) -> str:
        first = self.fragments[0]
        return (
            f"FragmentSet(secret_id={first.secret_id!r}, secret_version={first.secret_version}, "
            f"scheme={first.scheme!r}, threshold={first.threshold}, count={first.count})"
        )


def _check_verify_key(verify_key: object) -> None:
    if not isinstance(verify_key, (bytes, bytearray)):
        raise TypeError(f"verify_key must be bytes (from MasterKey.verify_key), got {type(verify_key).__name__}")
    if len(verify_key) != 32:
        raise ValueError(f"verify_key must be 32 bytes (from MasterKey.verify_key), got {len(verify_key)}")


def _check_fragment(name: str, fragment: object) -> None:
    if not isinstance(fragment, Fragment):
        raise TypeError(
            f"{name} must be a Fragment, got {type(fragment).__name__}; "
            "decode fragment bytes with Fragment.from_bytes"
        )


def _check_commitment(name: str, commitment: object) -> None:
    if not isinstance(commitment, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes (from FragmentSet.commitments), got {type(commitment).__name__}")


def _mac(verify_key: bytes, label: str, data: bytes) -> bytes:
    _check_verify_key(verify_key)
    return hmac.new(verify_key, encode_fields(label, data), hashlib.sha256).digest()


def commit_fragment(fragment: Fragment, verify_key: bytes) -> bytes:
    """Return the commitment to a fragment: HMAC-SHA256 over its encoding."""
    return _mac(verify_key, _COMMITMENT_LABEL, fragment.to_bytes())


def digest_secret(secret: bytes, verify_key: bytes) -> bytes:
    """Return the digest of a secret: HMAC-SHA256 under the verify key."""
    return _mac(verify_key, _DIGEST_LABEL, bytes(secret))


def verify_fragment(fragment: Fragment, commitment: bytes | None, *, verify_key: bytes) -> None:
    """Raise FragmentCorrupted(fragment.index) unless `commitment` matches the fragment.

    A missing commitment (None) counts as a mismatch. The comparison runs in
    constant time. Raises TypeError when `fragment` is not a Fragment or
    `commitment` is neither bytes nor None.
    """
    _check_fragment("fragment", fragment)
    if commitment is not None:
        _check_commitment("commitment", commitment)
    expected = commit_fragment(fragment, verify_key)
    if commitment is None or not hmac.compare_digest(expected, bytes(commitment)):
        raise FragmentCorrupted(fragment.index)


def _data_key_aad(secret_id: str, secret_version: int) -> bytes:
    return encode_fields(_DATA_KEY_AAD_LABEL, secret_id, secret_version)


def split_secret(
    secret: bytes,
    policy: Policy,
    *,
    secret_id: str,
    version: int,
    verify_key: bytes,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> FragmentSet:
    """Split `secret` into `policy.fragments` fragments with commitments and digest.

    `randbytes(n)` must return n bytes from a CSPRNG. The krawczyk scheme
    draws the data key, then the nonce, then the Shamir coefficients, so a
    deterministic `randbytes` reproduces every fragment exactly.
    """
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    secret = bytes(secret)
    if not secret:
        raise ValueError("secret must not be empty")
    validate_ids(secret_id, version)
    scheme = policy.scheme_for(len(secret))
    n, k = policy.fragments, policy.threshold

    if scheme == SCHEME_SHAMIR:
        payloads = [share.y for share in shamir.split(secret, k, n, randbytes=randbytes)]
    else:
        data_key = randbytes(DATA_KEY_LENGTH)
        nonce = randbytes(NONCE_LENGTH)
        ciphertext = AESGCM(data_key).encrypt(nonce, secret, _data_key_aad(secret_id, version))
        key_shares = shamir.split(data_key, k, n, randbytes=randbytes)
        pieces = ida.disperse(nonce + ciphertext, k, n)
        payloads = [share.y + piece.data for share, piece in zip(key_shares, pieces)]

    fragments = tuple(
        Fragment(
            scheme=scheme,
            secret_id=secret_id,
            secret_version=version,
            index=index,
            threshold=k,
            count=n,
            secret_length=len(secret),
            payload=payload,
        )
        for index, payload in enumerate(payloads, start=1)
    )
    commitments = {fragment.index: commit_fragment(fragment, verify_key) for fragment in fragments}
    return FragmentSet(
        fragments=fragments,
        commitments=MappingProxyType(commitments),
        digest=digest_secret(secret, verify_key),
    )


def _select_valid(
    fragments: Sequence[Fragment],
    verify_key: bytes,
    commitments: Mapping[int, bytes],
) -> tuple[list[Fragment], list[int]]:
    """Return the fragments that match their commitments, one per index, and the failed indexes."""
    valid: dict[int, Fragment] = {}
    corrupted: list[int] = []
    for fragment in fragments:
        if fragment.index in valid:
            # A redelivered copy of a fragment that already verified.
            continue
        try:
            verify_fragment(fragment, commitments.get(fragment.index), verify_key=verify_key)
        except FragmentCorrupted:
            corrupted.append(fragment.index)
            continue
        valid[fragment.index] = fragment
    return list(valid.values()), corrupted


def _check_combine_arguments(
    fragments: object,
    commitments: object,
    digest: object,
    secret_id: object,
    secret_version: object,
) -> list[Fragment]:
    """Return the fragments as a list, raising TypeError or ValueError for a caller's mistake."""
    if isinstance(fragments, (str, bytes, bytearray, memoryview)) or not isinstance(fragments, Iterable):
        raise TypeError(f"fragments must be a sequence of Fragment, got {type(fragments).__name__}")
    items = list(fragments)
    for position, fragment in enumerate(items):
        _check_fragment(f"fragments[{position}]", fragment)

    if not isinstance(commitments, Mapping):
        raise TypeError(
            "commitments must be a mapping of fragment index to commitment bytes "
            f"(FragmentSet.commitments), got {type(commitments).__name__}"
        )
    for index, commitment in commitments.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"commitments keys must be fragment indexes (int), got {type(index).__name__}")
        _check_commitment(f"commitments[{index}]", commitment)

    if not isinstance(digest, (bytes, bytearray)):
        raise TypeError(f"digest must be bytes (from FragmentSet.digest), got {type(digest).__name__}")
    if len(digest) != MAC_LENGTH:
        raise ValueError(f"digest must be {MAC_LENGTH} bytes (from FragmentSet.digest), got {len(digest)}")
    if secret_id is not None and not isinstance(secret_id, str):
        raise TypeError(f"secret_id must be a str or None, got {type(secret_id).__name__}")
    if secret_version is not None and (not isinstance(secret_version, int) or isinstance(secret_version, bool)):
        raise TypeError(f"secret_version must be an int or None, got {type(secret_version).__name__}")
    return items


def _check_same_secret(
    fragments: Sequence[Fragment],
    threshold: int,
    secret_id: str | None,
    secret_version: int | None,
) -> None:
    reference = fragments[0]
    expected = {"threshold": threshold}
    if secret_id is not None:
        expected["secret_id"] = secret_id
    if secret_version is not None:
        expected["secret_version"] = secret_version
    for name, value in expected.items():
        if getattr(reference, name) != value:
            raise CombineError(
                f"fragment {reference.index} has {name} {getattr(reference, name)!r}, "
                f"expected {value!r}"
            )
    for fragment in fragments[1:]:
        for name in _SHARED_FIELDS:
            if getattr(fragment, name) != getattr(reference, name):
                raise CombineError(
                    f"fragment {fragment.index} has {name} {getattr(fragment, name)!r} but fragment "
                    f"{reference.index} has {getattr(reference, name)!r}; fragments of different "
                    "secrets or versions cannot be combined"
                )


def combine_fragments(
    fragments: Sequence[Fragment],
    *,
    threshold: int,
    verify_key: bytes,
    commitments: Mapping[int, bytes],
    digest: bytes,
    secret_id: str | None = None,
    secret_version: int | None = None,
) -> bytes:
    """Rebuild a secret from fragments, checking commitments and digest.

    Each fragment is checked against its commitment first. Fragments that
    fail are skipped and the first `threshold` valid ones are combined, so
    spare fragments can stand in for corrupted ones. Callers that must name
    every faulty holder call `verify_fragment` on each fragment themselves.

    Raises:
        FragmentCorrupted: fewer than `threshold` fragments verified and at
            least one failed; names the first that failed.
        CombineError: too few fragments, or fragments of different secrets,
            versions or thresholds (or not those of `secret_id` and
            `secret_version` when given).
        IntegrityError: the combined secret does not match `digest`.
        TypeError, ValueError: an argument has the wrong type or size, such
            as an item of `fragments` that is not a Fragment.
    """
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
    if not 2 <= threshold <= shamir.MAX_SHARES:
        raise ValueError(f"threshold must be in 2..{shamir.MAX_SHARES}, got {threshold}")
    _check_verify_key(verify_key)
    fragments = _check_combine_arguments(fragments, commitments, digest, secret_id, secret_version)
    valid, corrupted = _select_valid(fragments, verify_key, commitments)
    if len(valid) < threshold:
        if corrupted:
            raise FragmentCorrupted(corrupted[0])
        raise CombineError(
            f"need {threshold} fragments with distinct indexes to combine, got {len(valid)}; "
            "collect more fragments"
        )
    _check_same_secret(valid, threshold, secret_id, secret_version)

    chosen = valid[:threshold]
    reference = chosen[0]
    if reference.scheme == SCHEME_SHAMIR:
        shares = [shamir.Share(fragment.index, fragment.payload) for fragment in chosen]
        secret = shamir.combine(shares, threshold)
    else:
        key_shares = [
            shamir.Share(fragment.index, fragment.payload[:DATA_KEY_LENGTH]) for fragment in chosen
        ]
        pieces = [ida.Piece(fragment.index, fragment.payload[DATA_KEY_LENGTH:]) for fragment in chosen]
        data_key = shamir.combine(key_shares, threshold)
        dispersed = ida.recover(pieces, threshold, dispersed_length(reference.secret_length))
        nonce, ciphertext = dispersed[:NONCE_LENGTH], dispersed[NONCE_LENGTH:]
        aad = _data_key_aad(reference.secret_id, reference.secret_version)
        try:
            secret = AESGCM(data_key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise IntegrityError() from None

    if not hmac.compare_digest(digest_secret(secret, verify_key), bytes(digest)):
        raise IntegrityError()
    return secret
