"""Shamir secret sharing over GF(2^8), one polynomial per secret byte.

A secret of L bytes is shared with L independent polynomials of degree k - 1,
which are evaluated all at once as byte vectors. The constant term of
polynomial i is secret byte i, and the other coefficients are uniformly
random bytes. Share
number x is (x, f(x)) for x = 1..n. Any k shares determine the polynomials
and so the secret; k - 1 shares give every secret of that length equal
probability.

Polynomial evaluation (Horner's rule) and Lagrange interpolation multiply
secret vectors only by public values (x-coordinates and Lagrange
coefficients), through the vector operations of `gf256`. The module
docstring of `gf256` states what that does and does not make constant-time.

This is a raw primitive: shares carry no integrity protection, so a wrong
share silently gives a wrong secret. `shardbus.sharing.fragmentation` adds
commitments and a digest.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Sequence

from shardbus.errors import CombineError
from shardbus.sharing import gf256

#: The largest share count: x-coordinates are the non-zero field elements.
MAX_SHARES = 255


@dataclass(frozen=True)
class Share:
    """One Shamir share: the point (x, y) on the secret's polynomials."""

    x: int
    y: bytes

    def __repr__(self) -> str:
        # The value stays out of the repr, so printing or logging a share does
        # not reveal it.
        return f"Share(x={self.x}, y=<{len(self.y)} bytes>)"


def validate_policy(threshold: int, count: int) -> None:
    """Raise ValueError unless 2 <= threshold <= count <= 255."""
    for name, value in (("threshold", threshold), ("count", count)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 2 <= threshold <= MAX_SHARES:
        raise ValueError(
            f"threshold must be in 2..{MAX_SHARES}, got {threshold}; "
            "a threshold of 1 would make every share the secret itself"
        )
    if not threshold <= count <= MAX_SHARES:
        raise ValueError(f"count must be in {threshold}..{MAX_SHARES} (threshold..255), got {count}")


def split(
    secret: bytes,
    threshold: int,
    count: int,
    *,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> list[Share]:
    """Split `secret` into `count` shares, any `threshold` of which recover it.

    `randbytes(n)` must return n bytes from a CSPRNG. It is called once per
    random coefficient, in order of increasing degree, so a deterministic
    `randbytes` reproduces the shares exactly.
    """
    validate_policy(threshold, count)
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    length = len(secret)
    if length < 1:
        raise ValueError("secret must not be empty")

    # Coefficient j multiplies x^j. Zero coefficients are allowed: excluding
    # them would make the distribution non-uniform.
    coefficients = [gf256.pack(secret)]
    for degree in range(1, threshold):
        random_bytes = randbytes(length)
        if len(random_bytes) != length:
            raise ValueError(f"randbytes({length}) returned {len(random_bytes)} bytes")
        coefficients.append(gf256.pack(random_bytes))

    shares = []
    for x in range(1, count + 1):
        # Horner's rule: f(x) = (...(c_{k-1} x + c_{k-2}) x + ...) x + c_0.
        value = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):
            value = gf256.add_packed(gf256.scale_packed(value, x, length), coefficient, length)
        shares.append(Share(x, gf256.unpack(value, length)))
    return shares


def validate_shares(shares: Sequence[Share], threshold: int) -> None:
    """Raise CombineError unless `shares` can be combined at `threshold`.

    Checks, in order: at least `threshold` shares, every x in 1..255, no
    duplicate x, and every y of the same non-zero length. Raises TypeError
    when `shares` is not a sequence of Share.
    """
    if isinstance(shares, (str, bytes, bytearray)) or not isinstance(shares, Sequence):
        raise TypeError(f"shares must be a sequence of Share, got {type(shares).__name__}")
    for position, share in enumerate(shares):
        if not isinstance(share, Share):
            raise TypeError(f"shares[{position}] must be a Share, got {type(share).__name__}")
    if len(shares) < threshold:
        raise CombineError(
            f"need at least {threshold} shares to combine, got {len(shares)}; "
            "collect more shares"
        )
    seen: set[int] = set()
    for share in shares:
        if not isinstance(share.y, bytes):
            raise CombineError(f"share y must be bytes, got {type(share.y).__name__} for x={share.x!r}")
        if not isinstance(share.x, int) or isinstance(share.x, bool) or not 1 <= share.x <= MAX_SHARES:
            raise CombineError(f"share x-coordinate must be in 1..{MAX_SHARES}, got {share.x!r}")
        if share.x in seen:
            raise CombineError(f"duplicate share x-coordinate {share.x}; each share must be distinct")
        seen.add(share.x)
    lengths = sorted({len(share.y) for share in shares})
    if len(lengths) != 1:
        by_x = ", ".join(f"x={share.x}: {len(share.y)}" for share in shares)
        raise CombineError(f"shares must all have the same length, got lengths ({by_x})")
    if lengths[0] == 0:
        raise CombineError("shares must not be empty")


def combine(shares: Sequence[Share], threshold: int) -> bytes:
    """Recover the secret from at least `threshold` shares.

    Every share is validated, and then the first `threshold` are interpolated at
    x = 0. A wrong share yields a wrong secret without an error, because raw
    Shamir shares carry no integrity protection.
    """
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
    if not 2 <= threshold <= MAX_SHARES:
        raise ValueError(f"threshold must be in 2..{MAX_SHARES}, got {threshold}")
    validate_shares(shares, threshold)

    chosen = list(shares[:threshold])
    length = len(chosen[0].y)
    coefficients = gf256.lagrange_at_zero([share.x for share in chosen])
    secret = gf256.pack(bytes(length))
    for share, coefficient in zip(chosen, coefficients):
        term = gf256.scale_packed(gf256.pack(share.y), coefficient, length)
        secret = gf256.add_packed(secret, term, length)
    return gf256.unpack(secret, length)
