"""Rabin IDA: every k-subset recovers, piece sizes, rejections."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbus.errors import CombineError
from shardbus.sharing import gf256, ida
from shardbus.sharing.ida import Piece

POLICIES = [(k, n) for n in range(1, 8) for k in range(1, n + 1)]


@pytest.mark.parametrize(("threshold", "count"), POLICIES)
@pytest.mark.parametrize("length", [0, 1, 6, 7, 100])
def test_every_k_subset_recovers(threshold, count, length):
    data = random.Random(length * 1000 + threshold * 10 + count).randbytes(length)
    pieces = ida.disperse(data, threshold, count)
    assert [piece.x for piece in pieces] == list(range(1, count + 1))
    for subset in itertools.combinations(pieces, threshold):
        assert ida.recover(list(subset), threshold, length) == data, [piece.x for piece in subset]


@pytest.mark.parametrize(
    ("length", "threshold", "expected"),
    [(0, 3, 0), (1, 3, 1), (3, 3, 1), (4, 3, 2), (1 << 20, 3, 349526), (1 << 20, 5, 209716)],
)
def test_piece_size_is_length_over_k(length, threshold, expected):
    assert ida.piece_length(length, threshold) == expected
    pieces = ida.disperse(bytes(length), threshold, threshold + 2)
    assert {len(piece.data) for piece in pieces} == {expected}


def test_pieces_are_polynomial_evaluations():
    # Piece x of rows r_0..r_{k-1} is r_0 + r_1 x + ... + r_{k-1} x^{k-1},
    # computed here with the constant-time vector ops as a cross-check.
    data = bytes(range(12))
    rows = [data[0:4], data[4:8], data[8:12]]
    for piece in ida.disperse(data, 3, 5):
        expected = bytes(4)
        power = 1
        for row in rows:
            expected = gf256.xor_bytes(expected, gf256.mul_bytes(row, power))
            power = gf256.mul(power, piece.x)
        assert piece.data == expected, piece.x


def test_extra_pieces_are_accepted():
    data = b"the quick brown fox"
    pieces = ida.disperse(data, 2, 5)
    assert ida.recover(pieces[::-1], 2, len(data)) == data


def test_too_few_pieces_raise():
    pieces = ida.disperse(b"data", 3, 5)
    with pytest.raises(CombineError, match="need at least 3 pieces.*got 2"):
        ida.recover(pieces[:2], 3, 4)


def test_duplicate_piece_rejected():
    pieces = ida.disperse(b"data", 2, 3)
    with pytest.raises(CombineError, match="duplicate piece x-coordinate 2"):
        ida.recover([pieces[1], pieces[1]], 2, 4)


@pytest.mark.parametrize("x", [0, 256, -3])
def test_out_of_range_x_rejected(x):
    pieces = ida.disperse(b"data", 2, 3)
    with pytest.raises(CombineError, match="x-coordinate must be in 1..255"):
        ida.recover([Piece(x, pieces[0].data), pieces[1]], 2, 4)


def test_tuple_instead_of_piece_rejected():
    pieces = ida.disperse(b"data", 2, 3)
    with pytest.raises(TypeError, match=r"pieces\[0\] must be a Piece, got tuple"):
        ida.recover([(1, pieces[0].data), pieces[1]], 2, 4)


@pytest.mark.parametrize(("pieces", "kind"), [(None, "NoneType"), (b"ab", "bytes")])
def test_non_sequence_pieces_rejected(pieces, kind):
    with pytest.raises(TypeError, match=f"pieces must be a sequence of Piece, got {kind}"):
        ida.recover(pieces, 2, 4)


def test_wrong_piece_length_rejected():
    pieces = ida.disperse(b"data", 2, 3)
    with pytest.raises(CombineError, match="piece 1 must be 2 bytes for 4 bytes of data at threshold 2, got 3"):
        ida.recover([Piece(1, b"abc"), pieces[1]], 2, 4)


@pytest.mark.parametrize(
    ("threshold", "count", "message"),
    [(0, 3, "threshold must be in 1..255"), (4, 3, "count must be in 4..255"), (2, 256, "count must be in 2..255")],
)
def test_disperse_rejects_bad_policy(threshold, count, message):
    with pytest.raises(ValueError, match=message):
        ida.disperse(b"data", threshold, count)


def test_piece_repr_hides_data():
    piece = Piece(2, b"ciphertext-bytes")
    assert repr(piece) == "Piece(x=2, data=<16 bytes>)"


def test_large_inverse_vandermonde():
    # A large threshold exercises the O(k^2) inverse on many points.
    data = random.Random(1).randbytes(2000)
    pieces = ida.disperse(data, 200, 255)
    chosen = pieces[55:]
    assert ida.recover(chosen, 200, len(data)) == data


@settings(max_examples=50, deadline=None)
@given(data=st.data(), payload=st.binary(max_size=500), count=st.integers(1, 16))
def test_random_policies_recover(data, payload, count):
    threshold = data.draw(st.integers(1, count))
    pieces = ida.disperse(payload, threshold, count)
    subset = data.draw(st.permutations(pieces))[:threshold]
    assert ida.recover(list(subset), threshold, len(payload)) == payload
