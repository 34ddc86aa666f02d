"""Rabin's information dispersal algorithm (IDA) over GF(2^8).

`disperse` cuts the data into k rows of m = ceil(len / k) bytes (the last
row zero-padded) and reads them as the coefficients of byte-vector
polynomials of degree k - 1. Piece number x is the evaluation at x, for
x = 1..n, so every piece is m bytes, about len / k. Any k pieces determine
the rows again: `recover` inverts the k x k Vandermonde matrix of their
x-coordinates and multiplies. This is the Reed-Solomon erasure code in
non-systematic form.

IDA gives no secrecy: fewer than k pieces still reveal a lot about the data.
shardbus only disperses AES-GCM ciphertext (see `fragmentation`), which is
public to every holder anyway. So unlike `shamir`, this module multiplies
with `bytes.translate` and a 256-byte table per constant, which indexes the
table by data bytes. That is fast but not constant-time: never pass
plaintext secrets to it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from shardbus.errors import CombineError
from shardbus.sharing import gf256

#: The largest piece count: x-coordinates are the non-zero field elements.
MAX_PIECES = 255


@dataclass(frozen=True)
class Piece:
    """One dispersed piece: the row polynomials evaluated at x."""

    x: int
    data: bytes

    def __repr__(self) -> str:
        return f"Piece(x={self.x}, data=<{len(self.data)} bytes>)"


def piece_length(length: int, threshold: int) -> int:
    """Return the size in bytes of each piece of `length` bytes of data."""
    return -(-length // threshold)


def _validate_policy(threshold: int, count: int) -> None:
    for name, value in (("threshold", threshold), ("count", count)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= threshold <= MAX_PIECES:
        raise ValueError(f"threshold must be in 1..{MAX_PIECES}, got {threshold}")
    if not threshold <= count <= MAX_PIECES:
        raise ValueError(f"count must be in {threshold}..{MAX_PIECES} (threshold..255), got {count}")


@functools.lru_cache(maxsize=256)
def _table(constant: int) -> bytes:
    """Return the translate table that multiplies every byte by `constant`."""
    return bytes(gf256.mul(constant, value) for value in range(256))


def _scale(data: bytes, constant: int) -> bytes:
    if constant == 1:
        return data
    return data.translate(_table(constant))


def disperse(data: bytes, threshold: int, count: int) -> list[Piece]:
    """Disperse `data` into `count` pieces, any `threshold` of which recover it.

    The caller must keep len(data): `recover` needs it to strip the padding.
    """
    _validate_policy(threshold, count)
    data = bytes(data)
    width = piece_length(len(data), threshold)
    padded = data + bytes(width * threshold - len(data))
    rows = [padded[row * width : (row + 1) * width] for row in range(threshold)]

    # Piece x is the sum of x^t * row_t. Summing in the int domain converts
    # each scaled row once, which is cheaper than Horner's rule here because
    # the byte-int conversions cost more than the table lookups. Row 0 has
    # the factor 1 for every x, so its int is shared.
    constant_term = int.from_bytes(rows[0], "little")
    pieces = []
    for x in range(1, count + 1):
        accumulator = constant_term
        power = 1
        for row in rows[1:]:
            power = gf256.mul(power, x)
            accumulator ^= int.from_bytes(_scale(row, power), "little")
        pieces.append(Piece(x, accumulator.to_bytes(width, "little")))
    return pieces


def _inverse_vandermonde(xs: Sequence[int]) -> list[list[int]]:
    """Return the inverse of the Vandermonde matrix V[i][t] = xs[i]^t.

    Column i of the inverse contains the coefficients of the Lagrange basis
    polynomial L_i(z) = prod_{j != i} (z - x_j) / (x_i - x_j). Each
    numerator is P(z) / (z - x_i) for P(z) = prod_j (z - x_j), found by
    synthetic division, so the whole inverse costs O(k^2) field operations.
    """
    size = len(xs)
    # P(z) coefficients, lowest degree first. Minus is plus in this field.
    product = [1]
    for x in xs:
        shifted = [0] + product
        for degree, coefficient in enumerate(product):
            shifted[degree] ^= gf256.mul(coefficient, x)
        product = shifted

    inverse = [[0] * size for _ in range(size)]
    for i, x_i in enumerate(xs):
        # Synthetic division of P(z) by (z - x_i), highest degree first.
        quotient = [0] * size
        carry = product[size]
        for degree in range(size - 1, -1, -1):
            quotient[degree] = carry
            carry = product[degree] ^ gf256.mul(x_i, carry)
        denominator = 1
        for j, x_j in enumerate(xs):
            if j != i:
                denominator = gf256.mul(denominator, x_i ^ x_j)
        scale = gf256.inverse(denominator)
        for degree in range(size):
            inverse[degree][i] = gf256.mul(quotient[degree], scale)
    return inverse


def recover(pieces: Sequence[Piece], threshold: int, length: int) -> bytes:
    """Recover `length` bytes of data from at least `threshold` pieces.

    Every piece is validated; the first `threshold` are used. A wrong piece
    yields wrong data without an error: IDA carries no integrity
    protection, so callers authenticate the result (AES-GCM does here).
    Raises TypeError when `pieces` is not a sequence of Piece.
    """
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError(f"threshold must be an int, got {type(threshold).__name__}")
    if not 1 <= threshold <= MAX_PIECES:
        raise ValueError(f"threshold must be in 1..{MAX_PIECES}, got {threshold}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    if isinstance(pieces, (str, bytes, bytearray)) or not isinstance(pieces, Sequence):
        raise TypeError(f"pieces must be a sequence of Piece, got {type(pieces).__name__}")
    for position, piece in enumerate(pieces):
        if not isinstance(piece, Piece):
            raise TypeError(f"pieces[{position}] must be a Piece, got {type(piece).__name__}")
    if len(pieces) < threshold:
        raise CombineError(
            f"need at least {threshold} pieces to recover the data, got {len(pieces)}; "
            "collect more pieces"
        )

    width = piece_length(length, threshold)
    seen: set[int] = set()
    for piece in pieces:
        if not isinstance(piece.x, int) or isinstance(piece.x, bool) or not 1 <= piece.x <= MAX_PIECES:
            raise CombineError(f"piece x-coordinate must be in 1..{MAX_PIECES}, got {piece.x!r}")
        if piece.x in seen:
            raise CombineError(f"duplicate piece x-coordinate {piece.x}; each piece must be distinct")
        seen.add(piece.x)
        if not isinstance(piece.data, bytes) or len(piece.data) != width:
            raise CombineError(
                f"piece {piece.x} must be {width} bytes for {length} bytes of data "
                f"at threshold {threshold}, got {len(piece.data)}"
            )

    chosen = list(pieces[:threshold])
    inverse = _inverse_vandermonde([piece.x for piece in chosen])
    rows = []
    for weights in inverse:
        accumulator = 0
        for weight, piece in zip(weights, chosen):
            if weight:
                accumulator ^= int.from_bytes(_scale(piece.data, weight), "little")
        rows.append(accumulator.to_bytes(width, "little"))
    return b"".join(rows)[:length]
