"""Fragments: both schemes, commitments, digest, strict decoding and what never leaks."""

from __future__ import annotations

import dataclasses
import itertools
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardbus.errors import CombineError, DecodeError, FragmentCorrupted, IntegrityError
from shardbus.sharing.fragment import Fragment, payload_length
from shardbus.sharing.fragmentation import (
    Policy,
    combine_fragments,
    commit_fragment,
    split_secret,
    verify_fragment,
)

VERIFY_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MARKER = b"MARKER-SECRET-"

POLICIES = [(k, n) for n in range(2, 8) for k in range(2, n + 1)]


def make_secret(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def split(secret, policy=Policy(5, 3), *, secret_id="db/password", version=1, verify_key=VERIFY_KEY, **kwargs):
    return split_secret(secret, policy, secret_id=secret_id, version=version, verify_key=verify_key, **kwargs)


def combine(fragments, fragment_set, *, threshold=3, verify_key=VERIFY_KEY, **kwargs):
    return combine_fragments(
        fragments,
        threshold=threshold,
        verify_key=verify_key,
        commitments=fragment_set.commitments,
        digest=fragment_set.digest,
        **kwargs,
    )


def with_payload(fragment: Fragment, payload: bytes) -> Fragment:
    return dataclasses.replace(fragment, payload=payload)


def flip_byte(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize(("length", "scheme"), [(1, "shamir"), (1024, "shamir"), (1025, "krawczyk"), (5000, "krawczyk")])
def test_both_schemes_every_subset(length, scheme):
    secret = make_secret(length)
    fragment_set = split(secret)
    assert {fragment.scheme for fragment in fragment_set.fragments} == {scheme}
    for subset in itertools.combinations(fragment_set.fragments, 3):
        assert combine(list(subset), fragment_set) == secret


@pytest.mark.parametrize("direct_limit", [1024, 0], ids=["shamir", "krawczyk"])
@pytest.mark.parametrize(("threshold", "count"), POLICIES)
def test_every_k_subset_combines(threshold, count, direct_limit):
    secret = make_secret(37, seed=threshold * 10 + count)
    policy = Policy(count, threshold, direct_limit)
    fragment_set = split(secret, policy, randbytes=random.Random(count * 10 + threshold).randbytes)
    assert fragment_set.fragments[0].scheme == policy.scheme_for(len(secret))
    assert [fragment.index for fragment in fragment_set.fragments] == list(range(1, count + 1))
    for subset in itertools.combinations(fragment_set.fragments, threshold):
        indexes = [fragment.index for fragment in subset]
        assert combine(list(subset), fragment_set, threshold=threshold) == secret, indexes
        assert combine(list(reversed(subset)), fragment_set, threshold=threshold) == secret, indexes[::-1]


def test_direct_limit_zero_always_disperses():
    fragment_set = split(b"x", Policy(3, 2, direct_limit=0))
    assert fragment_set.fragments[0].scheme == "krawczyk"
    assert combine(fragment_set.fragments[1:], fragment_set, threshold=2) == b"x"


def test_krawczyk_fragments_are_about_len_over_k():
    secret = make_secret(90_000)
    for fragments, threshold in ((5, 3), (9, 5)):
        fragment_set = split(secret, Policy(fragments, threshold))
        expected = 32 + -(-(90_000 + 12 + 16) // threshold)
        assert {len(fragment.payload) for fragment in fragment_set.fragments} == {expected}


@pytest.mark.parametrize("length", [1, 31, 1024, 1025, 4097, 90_000])
@pytest.mark.parametrize(("count", "threshold"), [(2, 2), (5, 3), (9, 5)])
def test_policy_fragment_size_matches_split(length, count, threshold):
    for direct_limit in (0, 1024):
        policy = Policy(count, threshold, direct_limit)
        fragment_set = split(make_secret(length), policy)
        assert {fragment.scheme for fragment in fragment_set.fragments} == {policy.scheme_for(length)}
        sizes = {len(fragment.payload) for fragment in fragment_set.fragments}
        assert sizes == {policy.fragment_size(length)}, (direct_limit, sizes)


def test_policy_fragment_size_per_scheme():
    policy = Policy(5, 3, direct_limit=100)
    assert policy.fragment_size(1) == 1
    assert policy.fragment_size(100) == 100
    # 32-byte key share plus ceil((101 + 12 + 16) / 3) bytes of nonce and ciphertext.
    assert policy.fragment_size(101) == 32 + 43
    assert policy.fragment_size(1_000_000) == 32 + 333_343


@pytest.mark.parametrize(
    ("length", "error", "message"),
    [
        (0, ValueError, "secret_length must be in 1..9223372036854775807, got 0"),
        (-5, ValueError, r"secret_length must be in 1\.\.\d+, got -5"),
        (2**63, ValueError, r"secret_length must be in 1\.\.\d+, got 9223372036854775808"),
        (True, TypeError, "secret_length must be an int, got bool"),
        (32.0, TypeError, "secret_length must be an int, got float"),
        (b"secret", TypeError, "secret_length must be an int, got bytes"),
    ],
)
def test_policy_fragment_size_rejects_invalid(length, error, message):
    with pytest.raises(error, match=message):
        Policy(5, 3).fragment_size(length)


def test_policy_redundancy_and_scheme():
    policy = Policy(fragments=9, threshold=5, direct_limit=100)
    assert policy.redundancy == 4
    assert policy.scheme_for(100) == "shamir"
    assert policy.scheme_for(101) == "krawczyk"


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((5, 1), ValueError, "Policy.threshold must be in 2..255, got 1"),
        ((2, 3), ValueError, r"Policy.fragments must be in 3..255 \(at least the threshold\), got 2"),
        ((256, 3), ValueError, "Policy.fragments must be in 3..255"),
        ((5, 3, -1), ValueError, "Policy.direct_limit must be >= 0, got -1"),
        ((5.0, 3), TypeError, "Policy.fragments must be an int"),
    ],
)
def test_policy_rejects_invalid(arguments, error, message):
    with pytest.raises(error, match=message):
        Policy(*arguments)


def test_split_is_deterministic_with_fixed_randbytes():
    secret = make_secret(3000)
    first = split(secret, randbytes=random.Random(5).randbytes)
    second = split(secret, randbytes=random.Random(5).randbytes)
    assert first.fragments == second.fragments
    assert dict(first.commitments) == dict(second.commitments)


def test_split_rejects_empty_and_bad_ids():
    with pytest.raises(ValueError, match="secret must not be empty"):
        split(b"")
    with pytest.raises(ValueError, match="'secret_id' must be 1..256 UTF-8 bytes, got 0"):
        split(b"s", secret_id="")
    with pytest.raises(ValueError, match="'secret_version' must be in 0"):
        split(b"s", version=-1)
    with pytest.raises(TypeError, match="'secret_id' must be a str"):
        split(b"s", secret_id=b"db")


def test_fragment_round_trip_bytes():
    for fragment in split(make_secret(2000)).fragments:
        assert Fragment.from_bytes(fragment.to_bytes()) == fragment


def test_corrupted_fragment_named_by_index():
    fragment_set = split(make_secret(40))
    damaged = with_payload(fragment_set.fragments[1], flip_byte(fragment_set.fragments[1].payload, 0))
    with pytest.raises(FragmentCorrupted) as raised:
        verify_fragment(damaged, fragment_set.commitments[2], verify_key=VERIFY_KEY)
    assert raised.value.index == 2
    with pytest.raises(FragmentCorrupted) as raised:
        combine([fragment_set.fragments[0], damaged, fragment_set.fragments[2]], fragment_set)
    assert raised.value.index == 2


def test_spare_fragment_replaces_corrupted():
    secret = make_secret(3000)
    fragment_set = split(secret)
    fragments = list(fragment_set.fragments)
    fragments[0] = with_payload(fragments[0], flip_byte(fragments[0].payload, 100))
    assert combine(fragments, fragment_set) == secret


def test_missing_commitment_counts_as_corrupted():
    fragment_set = split(make_secret(40))
    commitments = {index: value for index, value in fragment_set.commitments.items() if index != 3}
    with pytest.raises(FragmentCorrupted) as raised:
        combine_fragments(
            fragment_set.fragments[:3],
            threshold=3,
            verify_key=VERIFY_KEY,
            commitments=commitments,
            digest=fragment_set.digest,
        )
    assert raised.value.index == 3


def test_wrong_verify_key_fails_commitments():
    fragment_set = split(make_secret(40))
    with pytest.raises(FragmentCorrupted):
        combine(fragment_set.fragments, fragment_set, verify_key=OTHER_KEY)


def test_redelivered_fragment_counted_once():
    secret = make_secret(40)
    fragment_set = split(secret)
    first, second, third = fragment_set.fragments[:3]
    assert combine([first, first, second, third], fragment_set) == secret
    with pytest.raises(CombineError, match="need 3 fragments with distinct indexes.*got 2"):
        combine([first, first, second], fragment_set)


@pytest.mark.parametrize("field", ["secret_id", "secret_version"])
def test_mixed_secrets_rejected(field):
    # Both secrets share a verify key here, so every fragment passes its
    # commitment and only the consistency check can catch the mix.
    secret = make_secret(40)
    fragment_set = split(secret, secret_id="a", version=1)
    other = split(secret, secret_id="b" if field == "secret_id" else "a", version=2 if field == "secret_version" else 1)
    fragments = [fragment_set.fragments[0], other.fragments[1], other.fragments[2]]
    commitments = {1: fragment_set.commitments[1], 2: other.commitments[2], 3: other.commitments[3]}
    with pytest.raises(CombineError, match=f"fragment 2 has {field} .* but fragment 1 has"):
        combine_fragments(
            fragments, threshold=3, verify_key=VERIFY_KEY, commitments=commitments, digest=fragment_set.digest
        )


def test_expected_ids_and_threshold_enforced():
    fragment_set = split(make_secret(40), secret_id="db/password", version=4)
    with pytest.raises(CombineError, match="has secret_id 'db/password', expected 'db/other'"):
        combine(fragment_set.fragments, fragment_set, secret_id="db/other")
    with pytest.raises(CombineError, match="has secret_version 4, expected 5"):
        combine(fragment_set.fragments, fragment_set, secret_version=5)
    with pytest.raises(CombineError, match="has threshold 3, expected 4"):
        combine(fragment_set.fragments, fragment_set, threshold=4)
    assert combine(fragment_set.fragments, fragment_set, secret_id="db/password", secret_version=4)


@pytest.mark.parametrize("length", [40, 3000])
def test_digest_mismatch_detected(length):
    fragment_set = split(make_secret(length))
    wrong = dataclasses.replace(fragment_set, digest=flip_byte(fragment_set.digest, 0))
    with pytest.raises(IntegrityError):
        combine(fragment_set.fragments, wrong)


def test_tampered_ciphertext_with_forged_commitments_fails_aead():
    # Whoever holds the verify key can forge commitments, but AES-GCM
    # still rejects the changed ciphertext.
    fragment_set = split(make_secret(3000))
    fragments = list(fragment_set.fragments[:3])
    fragments[0] = with_payload(fragments[0], flip_byte(fragments[0].payload, 40))
    commitments = {fragment.index: commit_fragment(fragment, VERIFY_KEY) for fragment in fragments}
    with pytest.raises(IntegrityError):
        combine_fragments(
            fragments, threshold=3, verify_key=VERIFY_KEY, commitments=commitments, digest=fragment_set.digest
        )


def test_threshold_argument_validated():
    fragment_set = split(make_secret(40))
    with pytest.raises(ValueError, match="threshold must be in 2..255, got 1"):
        combine(fragment_set.fragments, fragment_set, threshold=1)


def combine_with(fragment_set, **overrides):
    arguments = {
        "fragments": fragment_set.fragments,
        "threshold": 3,
        "verify_key": VERIFY_KEY,
        "commitments": fragment_set.commitments,
        "digest": fragment_set.digest,
    }
    arguments.update(overrides)
    return combine_fragments(arguments.pop("fragments"), **arguments)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"fragments": None}, TypeError, "fragments must be a sequence of Fragment, got NoneType"),
        ({"fragments": b"fragment bytes"}, TypeError, "fragments must be a sequence of Fragment, got bytes"),
        ({"commitments": None}, TypeError, r"commitments must be a mapping .*, got NoneType"),
        ({"commitments": [b"\x00" * 32] * 5}, TypeError, r"commitments must be a mapping .*, got list"),
        ({"commitments": {"1": b"\x00" * 32}}, TypeError, r"commitments keys must be fragment indexes \(int\), got str"),
        ({"commitments": {1: "abc"}}, TypeError, r"commitments\[1\] must be bytes .*, got str"),
        ({"commitments": {1: None}}, TypeError, r"commitments\[1\] must be bytes .*, got NoneType"),
        ({"digest": None}, TypeError, r"digest must be bytes .*, got NoneType"),
        ({"digest": "ab" * 16}, TypeError, r"digest must be bytes .*, got str"),
        ({"digest": bytes(31)}, ValueError, r"digest must be 32 bytes .*, got 31"),
        ({"verify_key": None}, TypeError, r"verify_key must be bytes .*, got NoneType"),
        ({"verify_key": bytes(16)}, ValueError, r"verify_key must be 32 bytes .*, got 16"),
        ({"secret_id": 7}, TypeError, "secret_id must be a str or None, got int"),
        ({"secret_version": "1"}, TypeError, "secret_version must be an int or None, got str"),
    ],
)
def test_combine_rejects_wrong_argument_types(overrides, error, message):
    fragment_set = split(make_secret(40))
    with pytest.raises(error, match=message):
        combine_with(fragment_set, **overrides)


def test_combine_rejects_single_fragment_for_sequence():
    fragment_set = split(make_secret(40))
    with pytest.raises(TypeError, match="fragments must be a sequence of Fragment, got Fragment"):
        combine_with(fragment_set, fragments=fragment_set.fragments[0])


@pytest.mark.parametrize(
    ("replacement", "kind"),
    [
        (lambda fragment: fragment.to_bytes(), "bytes"),
        (lambda fragment: (fragment.index, fragment.payload), "tuple"),
        (lambda fragment: None, "NoneType"),
    ],
)
def test_combine_rejects_non_fragment_item(replacement, kind):
    fragment_set = split(make_secret(40))
    fragments = list(fragment_set.fragments)
    fragments[2] = replacement(fragments[2])
    with pytest.raises(TypeError, match=rf"fragments\[2\] must be a Fragment, got {kind}; decode fragment bytes"):
        combine_with(fragment_set, fragments=fragments)


def test_combine_accepts_iterator_and_bytearray():
    secret = make_secret(40)
    fragment_set = split(secret)
    assert combine_with(
        fragment_set,
        fragments=iter(fragment_set.fragments),
        verify_key=bytearray(VERIFY_KEY),
        digest=bytearray(fragment_set.digest),
    ) == secret


def test_verify_fragment_rejects_wrong_types():
    fragment_set = split(make_secret(40))
    fragment = fragment_set.fragments[0]
    with pytest.raises(TypeError, match="fragment must be a Fragment, got bytes"):
        verify_fragment(fragment.to_bytes(), fragment_set.commitments[1], verify_key=VERIFY_KEY)
    with pytest.raises(TypeError, match=r"commitment must be bytes .*, got str"):
        verify_fragment(fragment, "commitment", verify_key=VERIFY_KEY)
    with pytest.raises(TypeError, match=r"verify_key must be bytes .*, got str"):
        verify_fragment(fragment, fragment_set.commitments[1], verify_key="key")


def encode(document: dict) -> bytes:
    return msgpack.packb(document, use_bin_type=True)


def fragment_document() -> dict:
    fragment = split(b"0123456789").fragments[0]
    return msgpack.unpackb(fragment.to_bytes())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("payload"), "fragment field 'payload' is missing"),
        (lambda d: d.update(extra=1), "fragment has unknown field 'extra'"),
        (lambda d: d.update(format_version=2), "fragment field 'format_version' must be 1, got 2"),
        (lambda d: d.update(format_version=True), "'format_version' must be 1, got True"),
        (lambda d: d.update(threshold=True), "fragment field 'threshold' must be an int, got bool"),
        (lambda d: d.update(index=6), "fragment field 'index' must be in 1..5, got 6"),
        (lambda d: d.update(index=0), "fragment field 'index' must be in 1..5, got 0"),
        (lambda d: d.update(scheme="xor"), "fragment field 'scheme' must be one of"),
        (lambda d: d.update(payload="text"), "fragment field 'payload' must be bytes, got str"),
        (lambda d: d.update(payload=b"short"), "fragment field 'payload' must be 10 bytes"),
        (lambda d: d.update(secret_length=0), "fragment field 'secret_length' must be in 1.."),
        (lambda d: d.update(count=300), "fragment field 'count' must be in 3..255, got 300"),
    ],
)
def test_decoding_rejects_bad_fields(change, message):
    document = fragment_document()
    change(document)
    with pytest.raises(DecodeError, match=message):
        Fragment.from_bytes(encode(document))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"not valid msgpack \(.*incomplete input\)"),
        (b"\xc1", r"not valid msgpack \(a reserved format byte\)"),
        (msgpack.packb([1, 2]), "must be a msgpack map, got tuple"),
        (msgpack.packb({1: 2}), r"not valid msgpack \(int is not allowed for map key"),
        (msgpack.packb({"k" * 300: 1}), r"not valid msgpack \(300 exceeds max_str_len\(256\)\)"),
        (msgpack.packb({str(i): i for i in range(40)}), r"not valid msgpack \(40 exceeds max_map_len\(32\)\)"),
        (msgpack.packb(list(range(40))), r"not valid msgpack \(40 exceeds max_array_len\(32\)\)"),
        (b"\xd4\x01\x00", r"not valid msgpack \(.*exceeds max_ext_len\(0\)\)"),
        (b"\x81\xa1k\xa2\xff\xfe", "fragment: a msgpack str is not valid UTF-8"),
    ],
    ids=["empty", "reserved-byte", "array", "int-key", "long-str", "big-map", "big-array", "ext", "bad-utf8"],
)
def test_decoding_rejects_malformed_input(data, message):
    with pytest.raises(DecodeError, match=message):
        Fragment.from_bytes(data)


def test_decoding_names_truncation():
    encoded = split(b"0123456789").fragments[0].to_bytes()
    for end in (1, len(encoded) // 2, len(encoded) - 1):
        with pytest.raises(DecodeError, match=r"fragment: not valid msgpack \(.*incomplete input\)"):
            Fragment.from_bytes(encoded[:end])


def test_decoding_rejects_trailing_bytes():
    fragment = split(b"0123456789").fragments[0]
    with pytest.raises(DecodeError, match="fragment: trailing bytes after the msgpack map"):
        Fragment.from_bytes(fragment.to_bytes() + b"\x00")


def test_decoding_accepts_bytes_like():
    fragment = split(b"0123456789").fragments[0]
    encoded = fragment.to_bytes()
    assert Fragment.from_bytes(bytearray(encoded)) == fragment
    assert Fragment.from_bytes(memoryview(encoded)) == fragment


@pytest.mark.parametrize(("data", "kind"), [("text", "str"), (None, "NoneType"), ([1, 2], "list")])
def test_decoding_rejects_non_bytes(data, kind):
    with pytest.raises(TypeError, match=f"Fragment.from_bytes expects bytes, got {kind}"):
        Fragment.from_bytes(data)


def test_decoding_rejects_non_canonical_order():
    document = fragment_document()
    reordered = dict(reversed(list(document.items())))
    with pytest.raises(DecodeError, match="not in canonical encoding"):
        Fragment.from_bytes(encode(reordered))


def test_no_payload_bytes_in_repr_or_errors():
    secret = MARKER * 4
    for policy in (Policy(5, 3), Policy(5, 3, direct_limit=0)):
        fragment_set = split(secret, policy, randbytes=lambda n: MARKER[:1] * n)
        fragment = fragment_set.fragments[0]
        texts = [repr(fragment), str(fragment), repr(fragment_set)]

        damaged = with_payload(fragment, flip_byte(fragment.payload, 0))
        with pytest.raises(FragmentCorrupted) as corrupted:
            combine([damaged, *fragment_set.fragments[1:3]], fragment_set)
        texts.append(str(corrupted.value))

        document = msgpack.unpackb(fragment.to_bytes())
        document["payload"] = document["payload"][:-1]
        with pytest.raises(DecodeError) as decode:
            Fragment.from_bytes(encode(document))
        texts.append(str(decode.value))

        with pytest.raises(IntegrityError) as integrity:
            combine(fragment_set.fragments, dataclasses.replace(fragment_set, digest=bytes(32)))
        texts.append(str(integrity.value))

        for text in texts:
            assert "MARKER" not in text
            assert fragment.payload[:8].hex() not in text
            assert str(fragment.payload[:8])[2:-1] not in text


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    length=st.integers(1, 400),
    count=st.integers(2, 8),
    direct_limit=st.sampled_from([0, 64, 1024]),
)
def test_random_policies_and_corruption(data, length, count, direct_limit):
    threshold = data.draw(st.integers(2, count))
    secret = data.draw(st.binary(min_size=length, max_size=length))
    fragment_set = split(secret, Policy(count, threshold, direct_limit))
    fragments = list(data.draw(st.permutations(fragment_set.fragments)))
    assert len(fragments[0].payload) == payload_length(fragments[0].scheme, length, threshold)
    assert combine(fragments, fragment_set, threshold=threshold) == secret

    victim = data.draw(st.integers(0, count - 1))
    position = data.draw(st.integers(0, len(fragments[victim].payload) - 1))
    fragments[victim] = with_payload(fragments[victim], flip_byte(fragments[victim].payload, position))
    if count > threshold:
        assert combine(fragments, fragment_set, threshold=threshold) == secret
    chosen = fragments[:threshold] if victim < threshold else fragments[victim - threshold + 1 : victim + 1]
    with pytest.raises(FragmentCorrupted) as raised:
        combine(chosen, fragment_set, threshold=threshold)
    assert raised.value.index == fragments[victim].index
