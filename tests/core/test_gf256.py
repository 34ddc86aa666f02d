"""GF(2^8) arithmetic: known answers, an independent reference and the vector operations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shamir_mnemonic.shamir import EXP_TABLE, LOG_TABLE

from shardbus.sharing import gf256


def slow_mul(a: int, b: int) -> int:
    """Carry-less multiplication followed by reduction modulo 0x11B."""
    product = 0
    for bit in range(8):
        if (b >> bit) & 1:
            product ^= a << bit
    for bit in range(14, 7, -1):
        if (product >> bit) & 1:
            product ^= 0x11B << (bit - 8)
    return product


def test_mul_fips197_examples():
    # FIPS-197 section 4.2: {57} * {83} = {c1}, and the xtime chain of {57}.
    assert gf256.mul(0x57, 0x83) == 0xC1
    assert gf256.mul(0x57, 0x13) == 0xFE
    assert gf256.mul(0x57, 0x02) == 0xAE
    assert gf256.mul(0x57, 0x04) == 0x47
    assert gf256.mul(0x57, 0x08) == 0x8E
    assert gf256.mul(0x57, 0x10) == 0x07


def test_mul_matches_slow_reference_for_all_pairs():
    for a in range(256):
        for b in range(256):
            assert gf256.mul(a, b) == slow_mul(a, b), (a, b)


def test_mul_matches_shamir_mnemonic_tables():
    # shamir-mnemonic (SLIP-39) uses the same field; its tables are an
    # independent implementation.
    for a in range(1, 256):
        for b in range(1, 256):
            expected = EXP_TABLE[(LOG_TABLE[a] + LOG_TABLE[b]) % 255]
            assert gf256.mul(a, b) == expected, (a, b)


def test_inverse_of_every_nonzero_element():
    for a in range(1, 256):
        assert gf256.mul(a, gf256.inverse(a)) == 1, a


def test_inverse_of_zero_raises():
    with pytest.raises(ZeroDivisionError):
        gf256.inverse(0)


def test_div_undoes_mul():
    for a in range(256):
        for b in range(1, 256, 7):
            assert gf256.div(gf256.mul(a, b), b) == a


@pytest.mark.parametrize("value", [-1, 256, 1.0, True, "1"])
def test_scalar_ops_reject_non_elements(value):
    with pytest.raises(ValueError, match="field element"):
        gf256.mul(value, 1)
    with pytest.raises(ValueError, match="field element"):
        gf256.add(1, value)


def test_lagrange_coefficients_sum_to_one():
    # Interpolating the constant polynomial 1 gives 1 at zero, so the
    # coefficients add up (XOR) to 1 for any set of points.
    for xs in ([1, 2], [1, 2, 3], [5, 200, 17, 3], list(range(1, 20))):
        total = 0
        for coefficient in gf256.lagrange_at_zero(xs):
            total ^= coefficient
        assert total == 1, xs


def test_lagrange_rejects_duplicate_x():
    with pytest.raises(ValueError, match="distinct"):
        gf256.lagrange_at_zero([1, 2, 1])


@given(data=st.binary(max_size=300), constant=st.integers(0, 255))
def test_mul_bytes_matches_scalar_mul(data, constant):
    expected = bytes(slow_mul(byte, constant) for byte in data)
    assert gf256.mul_bytes(data, constant) == expected


@given(pair=st.integers(0, 200).flatmap(lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))))
def test_xor_bytes_matches_bytewise_xor(pair):
    a, b = pair
    assert gf256.xor_bytes(a, b) == bytes(x ^ y for x, y in zip(a, b))


def test_xor_bytes_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        gf256.xor_bytes(b"ab", b"abc")


@given(data=st.binary(min_size=1, max_size=64), first=st.integers(0, 255), second=st.integers(0, 255))
def test_scale_packed_composes(data, first, second):
    length = len(data)
    packed = gf256.pack(data)
    twice = gf256.scale_packed(gf256.scale_packed(packed, first, length), second, length)
    once = gf256.scale_packed(packed, gf256.mul(first, second), length)
    assert gf256.unpack(twice, length) == gf256.unpack(once, length)


def test_packed_results_have_data_independent_size():
    # The guard bit must keep every packed result the same number of bits
    # whatever the data, so bigint normalization cannot depend on the
    # secret's leading zero bytes. This checks sizes, not timing.
    length = 48
    samples = [bytes(length), b"\xff" * length, b"\x00" * 47 + b"\x01", b"\x80" + bytes(47)]
    sizes = set()
    for data in samples:
        packed = gf256.pack(data)
        sizes.add(("pack", packed.bit_length()))
        for constant in (0, 1, 2, 0x53, 0xFF):
            sizes.add(("scale", constant, gf256.scale_packed(packed, constant, length).bit_length()))
        sizes.add(("add", gf256.add_packed(packed, packed, length).bit_length()))
    expected_bits = 8 * length + 9
    assert sizes == {("pack", expected_bits), ("add", expected_bits)} | {
        ("scale", constant, expected_bits) for constant in (0, 1, 2, 0x53, 0xFF)
    }


def test_unpack_rejects_missing_guard():
    with pytest.raises(ValueError, match="guard bit"):
        gf256.unpack(0x1234, 2)
