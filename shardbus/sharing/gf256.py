"""Arithmetic in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B).

This is the field used by SLIP-39 (trezor shamir-mnemonic) and by Vault's
`shamir` package. Addition is XOR; multiplication is carry-less multiplication
reduced modulo 0x11B.

Two kinds of operation live here:

* Scalar operations (`mul`, `inverse`, `div`, `lagrange_at_zero`) on
  integers 0..255. They index log/exp tables and branch on their operands,
  so they are only for public values: x-coordinates and Lagrange
  coefficients.
* Vector operations (`pack`, `unpack`, `add_packed`, `scale_packed`,
  `mul_bytes`) on whole byte strings that may be secret. The bytes are
  packed into one Python int and multiplied by a public constant with
  bit-sliced doubling ("xtime"): every byte is doubled at once with shifts
  and masks, and the doublings selected by the constant's bits are
  XOR-accumulated.

What is and is not constant-time:

* The vector operations contain no branch and no table index that depends
  on the secret bytes. They branch only on the public constant and on the
  public length.
* Every packed value carries a guard bit above its top byte, and every
  intermediate result keeps a set bit at a position fixed by the length.
  So CPython's bigint normalization, which strips leading zero digits,
  works on the same number of digits whatever the secret bytes are.
* CPython does not promise that its bigint operations run in constant
  time, and the interpreter may allocate, cache or branch inside them. This
  module removes the leaks a Python program controls. It cannot remove
  leaks inside the interpreter.
* Lengths, thresholds, share counts and x-coordinates are public and may
  affect timing.
* The scalar operations are not constant-time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

#: The reduction polynomial x^8 + x^4 + x^3 + x + 1.
POLYNOMIAL = 0x11B

# Reduction of x^8: when doubling carries out of bit 7, XOR this into the byte.
_REDUCTION = POLYNOMIAL & 0xFF


def _reference_mul(a: int, b: int) -> int:
    """Multiply two field elements bit by bit (used to build the tables)."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= POLYNOMIAL
        b >>= 1
    return product


def _build_tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    # 3 (x + 1) generates the multiplicative group of this field, so its powers
    # visit all 255 non-zero elements.
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value = _reference_mul(value, 3)
    # A doubled exp table saves a modulo in `mul`.
    for power in range(255, 510):
        exp[power] = exp[power - 255]
    return tuple(exp), tuple(log)


_EXP, _LOG = _build_tables()


def _check_element(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise ValueError(f"{name} must be a field element, an int in 0..255; got {value!r}")


def add(a: int, b: int) -> int:
    """Return a + b, which is also a - b in characteristic 2."""
    _check_element("a", a)
    _check_element("b", b)
    return a ^ b


def mul(a: int, b: int) -> int:
    """Return a * b for public field elements (not constant-time)."""
    _check_element("a", a)
    _check_element("b", b)
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def inverse(a: int) -> int:
    """Return the multiplicative inverse of a public non-zero element."""
    _check_element("a", a)
    if a == 0:
        raise ZeroDivisionError("0 has no multiplicative inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


def div(a: int, b: int) -> int:
    """Return a / b for public field elements, b non-zero."""
    return mul(a, inverse(b))


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Return the Lagrange basis coefficients l_i(0) for distinct non-zero xs.

    The polynomial through the points (x_i, y_i) takes the value
    sum(l_i(0) * y_i) at 0, where l_i(0) = prod_{j != i} x_j / (x_j - x_i).
    Subtraction is XOR in this field.
    """
    if len(set(xs)) != len(xs):
        raise ValueError(f"x-coordinates must be distinct, got {list(xs)}")
    coefficients = []
    for i, x_i in enumerate(xs):
        numerator = 1
        denominator = 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = mul(numerator, x_j)
                denominator = mul(denominator, x_j ^ x_i)
        coefficients.append(div(numerator, denominator))
    return coefficients


class _Layout(NamedTuple):
    """Masks for packed vectors of one byte length.

    A packed vector of `length` bytes is the int `guard | data`: the data
    bytes big-endian in bits 0 .. 8*length-1, a zero pad byte above them,
    and the guard bit at 8*length + 8.
    """

    guard: int
    # Bit 0 of every data byte, plus the guard shifted right by 7.
    low: int
    # Bits 1-7 of every data byte, plus the guard shifted left by 1.
    high: int
    # XORed into a doubled vector to turn its leftover guard bits back into
    # exactly `guard`.
    xtime_fix: int
    # guard ^ (guard << 1): moves a vector's guard one bit up.
    swap: int


@functools.lru_cache(maxsize=64)
def _layout(length: int) -> _Layout:
    guard = 1 << (8 * length + 8)
    ones = int.from_bytes(b"\x01" * length, "big")
    low = (guard >> 7) | ones
    high = (guard << 1) | (ones * 0xFE)
    xtime_fix = (guard << 1) ^ (_REDUCTION << (8 * length + 1)) ^ guard
    return _Layout(guard, low, high, xtime_fix, guard ^ (guard << 1))


def pack(data: bytes) -> int:
    """Pack a byte string into a vector int with a guard bit above its top byte."""
    # The prefix puts the guard bit in place before the int is built, so
    # leading zero bytes of the data never end up at the top of an int.
    return int.from_bytes(b"\x01\x00" + bytes(data), "big")


def unpack(packed: int, length: int) -> bytes:
    """Return the `length` data bytes of a packed vector."""
    if packed >> (8 * length + 8) != 1:
        raise ValueError(f"not a packed vector of {length} bytes: the guard bit is missing")
    return packed.to_bytes(length + 2, "big")[2:]


def add_packed(a: int, b: int, length: int) -> int:
    """Return the packed vector a + b (bytewise XOR) of two packed vectors."""
    layout = _layout(length)
    # A plain a ^ b would cancel both guards and leave an int whose size
    # depends on the data, so move b's guard up one bit first and drop the
    # extra guard afterwards. Every intermediate keeps a fixed top bit.
    moved = b ^ layout.swap
    both = a ^ moved
    return both ^ (layout.guard << 1)


def _xtime(packed: int, layout: _Layout) -> int:
    """Multiply every byte of a packed vector by x (that is, by 2)."""
    # Bit 7 of each byte, moved down to bit 0 of the same byte.
    carries = (packed >> 7) & layout.low
    # Each carry becomes 0x1B in its own byte. The product stays below 256,
    # so nothing spills into the next byte.
    reduction = carries * _REDUCTION
    shifted = (packed << 1) & layout.high
    doubled = shifted ^ reduction
    return doubled ^ layout.xtime_fix


def scale_packed(packed: int, constant: int, length: int) -> int:
    """Return the packed vector `constant * packed` for a public constant."""
    _check_element("constant", constant)
    layout = _layout(length)
    # The accumulator carries a second guard bit (guard << 1) that no term
    # touches, so its size stays fixed while terms toggle the first guard.
    accumulator = layout.guard << 1
    terms = 0
    power = packed
    remaining = constant
    while remaining:
        # Branching on the bits of the constant is safe because it is public.
        if remaining & 1:
            accumulator ^= power
            terms += 1
        remaining >>= 1
        if remaining:
            power = _xtime(power, layout)
    # After an odd number of terms the first guard is set, so only the second
    # must be cleared. After an even number the first must be set again too.
    if terms % 2:
        return accumulator ^ (layout.guard << 1)
    return accumulator ^ layout.swap


def mul_bytes(data: bytes, constant: int) -> bytes:
    """Return every byte of `data` multiplied by the public `constant`."""
    length = len(data)
    return unpack(scale_packed(pack(data), constant, length), length)


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """Return the bytewise sum a + b of two equal-length byte strings."""
    if len(a) != len(b):
        raise ValueError(f"operands must have equal length, got {len(a)} and {len(b)} bytes")
    length = len(a)
    return unpack(add_packed(pack(a), pack(b), length), length)
