"""Shamir sharing: every k-subset, rejections, and a cross-check with shamir-mnemonic."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shamir_mnemonic.shamir import RawShare, _interpolate

from shardbus.errors import CombineError
from shardbus.sharing import shamir
from shardbus.sharing.shamir import Share

POLICIES = [(k, n) for n in range(2, 8) for k in range(2, n + 1)]


def seeded_randbytes(seed: int):
    generator = random.Random(seed)
    return generator.randbytes


@pytest.mark.parametrize(("threshold", "count"), POLICIES)
def test_every_k_subset_recombines(threshold, count):
    secret = bytes(range(1, 24))
    shares = shamir.split(secret, threshold, count, randbytes=seeded_randbytes(threshold * 10 + count))
    assert [share.x for share in shares] == list(range(1, count + 1))
    for subset in itertools.combinations(shares, threshold):
        assert shamir.combine(list(subset), threshold) == secret, [share.x for share in subset]


@pytest.mark.parametrize(("threshold", "count"), [(2, 3), (3, 4), (4, 4)])
def test_every_order_recombines(threshold, count):
    secret = b"order does not matter"
    shares = shamir.split(secret, threshold, count)
    for subset in itertools.permutations(shares, threshold):
        assert shamir.combine(list(subset), threshold) == secret


def test_extra_shares_are_accepted():
    secret = b"spare shares"
    shares = shamir.split(secret, 3, 6)
    assert shamir.combine(shares, 3) == secret
    assert shamir.combine(shares[::-1], 3) == secret


@pytest.mark.parametrize(("threshold", "count"), [(k, n) for k, n in POLICIES if k >= 3])
def test_too_few_shares_give_wrong_secret(threshold, count):
    # Interpolating k - 1 shares as if the threshold were k - 1 yields some
    # other value. For a 32-byte secret a collision has probability 2^-256.
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold, count, randbytes=seeded_randbytes(count))
    for subset in itertools.combinations(shares, threshold - 1):
        assert shamir.combine(list(subset), threshold - 1) != secret


def _shares_for_every_coefficient(secret_byte: int, threshold: int, count: int) -> list[Share]:
    # One split tries every choice of the k - 1 random coefficients at once.
    # Every position of the secret contains the same byte, and
    # coefficient j at position i is digit j of i in base 256. Each
    # position is its own polynomial, so share position i is what a split
    # of that one byte gives with those coefficients.
    combinations = 256 ** (threshold - 1)
    digits = iter(
        bytes((position >> (8 * degree)) & 0xFF for position in range(combinations))
        for degree in range(threshold - 1)
    )
    return shamir.split(bytes([secret_byte]) * combinations, threshold, count, randbytes=lambda n: next(digits))


@pytest.mark.parametrize(
    ("threshold", "count", "secret_bytes"),
    [(2, 255, range(256)), (3, 5, (0x00, 0x01, 0x80, 0xFF))],
    ids=["2-of-255-every-secret", "3-of-5-four-secrets"],
)
def test_fewer_shares_uniform_for_every_secret(threshold, count, secret_bytes):
    # For each secret, the k - 1 shares of any holders take every possible
    # value for exactly one choice of the random coefficients. So they are
    # uniform and the same for every secret: they reveal nothing about it.
    for secret_byte in secret_bytes:
        shares = _shares_for_every_coefficient(secret_byte, threshold, count)
        for subset in itertools.combinations(shares, threshold - 1):
            values = set(zip(*(share.y for share in subset)))
            assert len(values) == 256 ** (threshold - 1), (secret_byte, [share.x for share in subset])


def test_too_few_shares_raise():
    shares = shamir.split(b"secret", 3, 5)
    with pytest.raises(CombineError, match="need at least 3 shares.*got 2"):
        shamir.combine(shares[:2], 3)


def test_duplicate_x_rejected():
    shares = shamir.split(b"secret", 2, 3)
    with pytest.raises(CombineError, match="duplicate share x-coordinate 1"):
        shamir.combine([shares[0], shares[0]], 2)


@pytest.mark.parametrize("x", [0, 256, -1, True])
def test_out_of_range_x_rejected(x):
    shares = shamir.split(b"secret", 2, 3)
    with pytest.raises(CombineError, match="x-coordinate must be in 1..255"):
        shamir.combine([Share(x, shares[0].y), shares[1]], 2)


def test_mismatched_lengths_rejected():
    shares = shamir.split(b"secret", 2, 3)
    short = Share(shares[1].x, shares[1].y[:-1])
    with pytest.raises(CombineError, match=r"same length.*x=1: 6, x=2: 5"):
        shamir.combine([shares[0], short], 2)


def test_empty_shares_rejected():
    with pytest.raises(CombineError, match="must not be empty"):
        shamir.combine([Share(1, b""), Share(2, b"")], 2)


def test_non_bytes_share_rejected():
    with pytest.raises(CombineError, match="share y must be bytes"):
        shamir.combine([Share(1, "ab"), Share(2, "cd")], 2)


def test_tuple_instead_of_share_rejected():
    shares = shamir.split(b"secret", 2, 3)
    with pytest.raises(TypeError, match=r"shares\[1\] must be a Share, got tuple"):
        shamir.combine([shares[0], (shares[1].x, shares[1].y)], 2)


@pytest.mark.parametrize(("shares", "kind"), [(None, "NoneType"), (b"ab", "bytes"), ({1: b"a", 2: b"b"}, "dict")])
def test_non_sequence_shares_rejected(shares, kind):
    with pytest.raises(TypeError, match=f"shares must be a sequence of Share, got {kind}"):
        shamir.combine(shares, 2)


@pytest.mark.parametrize(
    ("threshold", "count", "error", "message"),
    [
        (1, 3, ValueError, "threshold must be in 2..255"),
        (4, 3, ValueError, "count must be in 4..255"),
        (2, 256, ValueError, "count must be in 2..255"),
        (256, 256, ValueError, "threshold must be in 2..255"),
        (True, 3, TypeError, "threshold must be an int"),
        (2, 3.0, TypeError, "count must be an int"),
    ],
)
def test_split_rejects_bad_policy(threshold, count, error, message):
    with pytest.raises(error, match=message):
        shamir.split(b"secret", threshold, count)


def test_split_rejects_empty_secret():
    with pytest.raises(ValueError, match="secret must not be empty"):
        shamir.split(b"", 2, 3)


def test_split_rejects_str_secret():
    with pytest.raises(TypeError, match="secret must be bytes"):
        shamir.split("secret", 2, 3)


def test_split_rejects_short_randbytes():
    with pytest.raises(ValueError, match=r"randbytes\(6\) returned 5 bytes"):
        shamir.split(b"secret", 2, 3, randbytes=lambda n: bytes(n - 1))


def test_split_draws_one_coefficient_per_degree():
    requests = []

    def recording_randbytes(n):
        requests.append(n)
        return bytes(n)

    shamir.split(b"twelve bytes", 4, 6, randbytes=recording_randbytes)
    assert requests == [12, 12, 12]


def test_zero_coefficients_give_constant_shares():
    # With every random coefficient zero, f is the constant secret: this
    # checks that zero is a possible draw and that split uses randbytes.
    shares = shamir.split(b"abc", 3, 4, randbytes=lambda n: bytes(n))
    assert all(share.y == b"abc" for share in shares)


def test_share_repr_hides_value():
    share = Share(3, b"\x8f\x01top-secret")
    assert repr(share) == "Share(x=3, y=<12 bytes>)"
    assert "top-secret" not in repr(share)


def test_error_messages_contain_no_share_bytes():
    marker = b"\xfe\xedMARKER-BYTES"
    shares = [Share(1, marker), Share(1, marker)]
    with pytest.raises(CombineError) as raised:
        shamir.combine(shares, 2)
    assert "MARKER" not in str(raised.value)
    assert marker.hex() not in str(raised.value)


@pytest.mark.parametrize(("threshold", "count"), [(2, 2), (3, 5), (5, 9), (7, 7)])
def test_shares_interpolate_in_shamir_mnemonic(threshold, count):
    secret = bytes(range(100, 132))
    shares = shamir.split(secret, threshold, count, randbytes=seeded_randbytes(count))
    raw = [RawShare(share.x, share.y) for share in shares]
    for subset in itertools.combinations(raw, threshold):
        assert _interpolate(list(subset), 0) == secret
    # The polynomial through any k shares passes through every other share.
    basis = raw[:threshold]
    for share in raw[threshold:]:
        assert _interpolate(basis, share.x) == share.data


def test_combine_matches_shamir_mnemonic_on_foreign_points():
    # Points produced by shamir-mnemonic's interpolation of a random
    # polynomial must combine to its value at 0 here too.
    generator = random.Random(7)
    points = [RawShare(x, generator.randbytes(16)) for x in (3, 9, 200)]
    expected = _interpolate(points, 0)
    shares = [Share(point.x, point.data) for point in points]
    assert shamir.combine(shares, 3) == expected


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    secret=st.binary(min_size=1, max_size=80),
    count=st.integers(2, 12),
)
def test_random_policies_recombine(data, secret, count):
    threshold = data.draw(st.integers(2, count))
    shares = shamir.split(secret, threshold, count)
    subset = data.draw(st.permutations(shares)).copy()[:threshold]
    assert shamir.combine(subset, threshold) == secret


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    secret=st.binary(min_size=1, max_size=40),
    count=st.integers(2, 10),
)
def test_corrupted_share_changes_secret(data, secret, count):
    # The secret is sum(l_i * y_i) with every l_i non-zero, so flipping any
    # bit of any chosen share always changes the result.
    threshold = data.draw(st.integers(2, count))
    shares = shamir.split(secret, threshold, count)[:threshold]
    victim = data.draw(st.integers(0, threshold - 1))
    position = data.draw(st.integers(0, len(secret) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(shares[victim].y)
    damaged[position] ^= flip
    shares[victim] = Share(shares[victim].x, bytes(damaged))
    assert shamir.combine(shares, threshold) != secret
