"""Every decoder of untrusted bytes, with hostile inputs, shared by the tests and benchmarks/fuzz.py.

A `DecoderTarget` names one decoder, draws valid encodings for it, and
hostile inputs made from them (see hostile_mutations.py). `check` tests the
property: the decoder raises only its documented errors, and whatever it
accepts passes the target's own assertion. `check` takes plain bytes, so
a coverage-guided fuzzer such as atheris can call it too.

tests/schemas/test_hostile_decoders.py runs every target with a small
budget; benchmarks/fuzz.py runs them with a large one.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from hostile_mutations import byte_mutations, map_mutations
from hypothesis import strategies as st
from schema_strategies import hex_ids, messages, records

from schemas import codec
from schemas.audit import AuditRecord
from schemas.base import Message
from schemas.fields import HEX32_PATTERN, NAME_PATTERN
from schemas.operations import OperationRequest
from schemas.sealed import LeasePayload, PlanContext
from shardbus.audit import dump
from shardbus.crypto import aead, envelope
from shardbus.errors import DecodeError, IntegrityError
from shardbus.sharing.fragment import Fragment
from shardbus.sharing.fragmentation import Policy, split_secret
from streams.denials import readable_ids


@dataclass(frozen=True)
class DecoderTarget:
    """One decoder of untrusted bytes, with the inputs to try and the property to hold."""

    #: Short id for test ids and `benchmarks/fuzz.py --decoder`.
    name: str
    #: The function under test, as a dotted name.
    decoder: str
    #: Where the decoder's input comes from.
    source: str
    decode: Callable[[bytes], Any]
    #: The errors that mean the decoder rejected the input. Any other error fails the property.
    rejects: tuple[type[Exception], ...]
    valid: st.SearchStrategy[bytes]
    hostile: st.SearchStrategy[bytes]
    #: Called with the input and the decoded value when the decoder accepts an input.
    accepted: Callable[[bytes, Any], None]

    def check(self, data: bytes) -> None:
        """Decode `data`, and raise unless the decoder rejects it cleanly or accepts it soundly."""
        try:
            result = self.decode(data)
        except self.rejects:
            return
        self.accepted(data, result)


def _seeded_randbytes(seed: int) -> Callable[[int], bytes]:
    # Hypothesis must get the same input from the same draws, so the valid
    # encodings draw their randomness from a seed that hypothesis chose.
    return random.Random(seed).randbytes


def _codec_accepted(data: bytes, message: Any) -> None:
    assert isinstance(message, Message), type(message)
    assert codec.decode(codec.encode(message), type(message)) == message


@st.composite
def _fragments(draw: Any) -> bytes:
    count = draw(st.integers(2, 6))
    policy = Policy(fragments=count, threshold=draw(st.integers(2, count)), direct_limit=draw(st.sampled_from([0, 1024])))
    fragment_set = split_secret(
        draw(st.binary(min_size=1, max_size=64)), policy,
        secret_id=draw(st.sampled_from(["db/password", "k", "é/" * 20])),
        version=draw(st.integers(0, 2**63 - 1)),
        verify_key=bytes(32),
        randbytes=_seeded_randbytes(draw(st.integers(0, 2**32))),
    )
    return draw(st.sampled_from(fragment_set.fragments)).to_bytes()


def _fragment_accepted(data: bytes, fragment: Fragment) -> None:
    # Commitments cover the canonical encoding, so only that one may decode.
    assert fragment.to_bytes() == data


_leases = st.builds(LeasePayload, hex_ids, st.binary(max_size=256), st.integers(0, 2**63 - 1)).map(LeasePayload.to_bytes)

_plan_contexts = st.builds(
    PlanContext,
    st.binary(min_size=32, max_size=32),
    st.dictionaries(st.integers(1, 255), st.binary(min_size=32, max_size=32), max_size=6),
    st.binary(min_size=32, max_size=32),
).map(PlanContext.to_bytes)


def _round_trips(cls: Any) -> Callable[[bytes, Any], None]:
    def accepted(data: bytes, value: Any) -> None:
        assert cls.from_bytes(value.to_bytes()) == value

    return accepted


# Envelopes are sealed to fixed key pairs. HPKE draws its ephemeral key from
# OpenSSL, so the valid envelopes are made once per process and drawn from.
_ENVELOPE_INFO = b"shardbus fuzz envelope"
_ENVELOPE_PLAINTEXTS = (b"", b"x", b"fragment bytes " * 8)


@cache
def _envelope_key_pairs() -> dict[str, envelope.EnvelopeKeyPair]:
    return {kem: envelope.EnvelopeKeyPair.from_private_bytes(kem, bytes(range(1, 33))) for kem in envelope.KEMS}


@cache
def _sealed_envelopes() -> dict[bytes, bytes]:
    return {
        envelope.seal(key_pair.public_key, plaintext, info=_ENVELOPE_INFO): plaintext
        for key_pair in _envelope_key_pairs().values()
        for plaintext in _ENVELOPE_PLAINTEXTS
    }


def _open_envelope(data: bytes) -> bytes:
    # Both key pairs are tried, so an envelope of either suite reaches decryption.
    error: Exception = IntegrityError()
    for key_pair in _envelope_key_pairs().values():
        try:
            return envelope.open_(key_pair, data, info=_ENVELOPE_INFO)
        except (DecodeError, IntegrityError) as exc:
            error = exc
    raise error


def _envelope_accepted(data: bytes, plaintext: bytes) -> None:
    # A changed envelope must never open, so only the ones sealed here may.
    assert _sealed_envelopes().get(data) == plaintext


_envelopes = st.builds(lambda: sorted(_sealed_envelopes())).flatmap(st.sampled_from)


def _public_key_and_seal(data: bytes) -> bytes:
    # The first byte picks the KEM. The rest is the raw public key, as a
    # request's reply_public_key or a heartbeat's public_key carries it.
    if not data:
        raise DecodeError("empty input")
    kem = envelope.KEMS[data[0] % len(envelope.KEMS)]
    public_key = envelope.PublicKey.from_bytes(kem, data[1:])
    return envelope.seal(public_key, b"probe", info=_ENVELOPE_INFO)


@st.composite
def _public_keys(draw: Any) -> bytes:
    index = draw(st.integers(0, len(envelope.KEMS) - 1))
    key_pair = _envelope_key_pairs()[envelope.KEMS[index]]
    return bytes([index]) + key_pair.public_bytes()


@st.composite
def _random_public_keys(draw: Any) -> bytes:
    # Random bytes of exactly a key's length reach the KEM's own checks.
    index = draw(st.integers(0, len(envelope.KEMS) - 1))
    length = len(_envelope_key_pairs()[envelope.KEMS[index]].public_bytes())
    return bytes([index]) + draw(st.binary(min_size=length, max_size=length))


def _sealed_accepted(data: bytes, sealed: bytes) -> None:
    assert isinstance(sealed, bytes) and sealed


_BLOB_KEY = bytes(range(32))
_BLOB_AAD = b"shardbus fuzz blob"


def _seal_blob(plaintext: bytes, seed: int) -> bytes:
    return aead.seal(_BLOB_KEY, plaintext, _BLOB_AAD, randbytes=_seeded_randbytes(seed))


_blobs = st.builds(_seal_blob, st.binary(max_size=64), st.integers(0, 2**32))


def _blob_accepted(data: bytes, plaintext: bytes) -> None:
    # Only an unchanged blob opens, and every valid blob is a fresh seal of
    # its plaintext, so sealing again with the blob's own nonce must give it.
    nonce = data[1 : 1 + aead.NONCE_LENGTH]
    assert aead.seal(_BLOB_KEY, plaintext, _BLOB_AAD, randbytes=lambda n: nonce) == data


_requests = records(OperationRequest).map(codec.encode)


def _ids_accepted(data: bytes, ids: tuple[str, str] | None) -> None:
    if ids is None:
        return
    operation_id, app_id = ids
    assert re.fullmatch(HEX32_PATTERN, operation_id), operation_id
    assert re.fullmatch(NAME_PATTERN, app_id), app_id


def _header_framed(data: bytes) -> list[dict[str, Any]]:
    return [dump.describe(*item) for item in dump.read_header_framed(io.BytesIO(data))]


def _length_framed(data: bytes) -> list[dict[str, Any]]:
    return [dump.describe(*item) for item in dump.read_length_framed(io.BytesIO(data), 0)]


def _dump_accepted(data: bytes, lines: list[dict[str, Any]]) -> None:
    for line in lines:
        assert isinstance(line["partition"], int) and isinstance(line["offset"], int), line


_audit_values = st.lists(records(AuditRecord).map(codec.encode) | st.none(), min_size=1, max_size=3)


@st.composite
def _header_framed_records(draw: Any) -> bytes:
    values = draw(_audit_values)
    return b"".join(
        f"{draw(st.integers(0, 9))} {offset} {-1 if value is None else len(value)}\n".encode() + (value or b"")
        for offset, value in enumerate(values)
    )


@st.composite
def _length_framed_records(draw: Any) -> bytes:
    values = draw(_audit_values)
    return b"".join((-1 if value is None else len(value)).to_bytes(4, "big", signed=True) + (value or b"")
                    for value in values)


# Header lines with stray signs and digits, the part of the framing a
# flipped byte rarely reaches.
_header_lines = st.lists(st.from_regex(rb"\A[-+]{0,2}[0-9]{1,6}\Z"), min_size=1, max_size=4).map(
    lambda parts: b" ".join(parts) + b"\n"
)


TARGETS: tuple[DecoderTarget, ...] = (
    DecoderTarget(
        name="wire-codec",
        decoder="schemas.codec.decode",
        source="every Kafka record a service, holder or client consumes",
        decode=codec.decode,
        rejects=(DecodeError,),
        valid=messages().map(codec.encode),
        hostile=map_mutations(messages().map(codec.encode)),
        accepted=_codec_accepted,
    ),
    DecoderTarget(
        name="fragment",
        decoder="shardbus.sharing.fragment.Fragment.from_bytes",
        source="a holder's fragment, opened by the reassembler",
        decode=Fragment.from_bytes,
        rejects=(DecodeError,),
        valid=_fragments(),
        hostile=map_mutations(_fragments()),
        accepted=_fragment_accepted,
    ),
    DecoderTarget(
        name="lease-payload",
        decoder="schemas.sealed.LeasePayload.from_bytes",
        source="a LeaseReply's envelope, opened by the client",
        decode=LeasePayload.from_bytes,
        rejects=(DecodeError,),
        valid=_leases,
        hostile=map_mutations(_leases),
        accepted=_round_trips(LeasePayload),
    ),
    DecoderTarget(
        name="plan-context",
        decoder="schemas.sealed.PlanContext.from_bytes",
        source="an OperationPlan's sealed context, opened by the reassembler",
        decode=PlanContext.from_bytes,
        rejects=(DecodeError,),
        valid=_plan_contexts,
        hostile=map_mutations(_plan_contexts),
        accepted=_round_trips(PlanContext),
    ),
    DecoderTarget(
        name="envelope",
        decoder="shardbus.crypto.envelope.open_",
        source="sealed fragments, fragment keys, plan contexts and leases",
        decode=_open_envelope,
        rejects=(DecodeError, IntegrityError),
        valid=_envelopes,
        hostile=byte_mutations(_envelopes),
        accepted=_envelope_accepted,
    ),
    DecoderTarget(
        name="public-key",
        decoder="shardbus.crypto.envelope.PublicKey.from_bytes, then seal",
        source="a request's reply key and a heartbeat's public key",
        decode=_public_key_and_seal,
        rejects=(DecodeError,),
        valid=_public_keys(),
        hostile=st.one_of(byte_mutations(_public_keys()), _random_public_keys()),
        accepted=_sealed_accepted,
    ),
    DecoderTarget(
        name="sealed-blob",
        decoder="shardbus.crypto.aead.open_",
        source="sealed fragments on holders, backups and mapping records in Redis",
        decode=lambda data: aead.open_(_BLOB_KEY, data, _BLOB_AAD),
        rejects=(DecodeError, IntegrityError),
        valid=_blobs,
        hostile=byte_mutations(_blobs),
        accepted=_blob_accepted,
    ),
    DecoderTarget(
        name="request-ids",
        decoder="streams.denials.readable_ids",
        source="a request that failed strict decoding, read for its reply topic",
        decode=readable_ids,
        rejects=(),
        valid=_requests,
        hostile=map_mutations(_requests),
        accepted=_ids_accepted,
    ),
    DecoderTarget(
        name="audit-dump-header",
        decoder="shardbus.audit.dump.read_header_framed, then describe",
        source="kcat -f '%p %o %S\\n%s' output piped to python -m shardbus.audit.dump",
        decode=_header_framed,
        rejects=(DecodeError,),
        valid=_header_framed_records(),
        hostile=st.one_of(
            byte_mutations(_header_framed_records()),
            st.tuples(_header_lines, st.binary(max_size=64)).map(b"".join),
        ),
        accepted=_dump_accepted,
    ),
    DecoderTarget(
        name="audit-dump-length",
        decoder="shardbus.audit.dump.read_length_framed, then describe",
        source="kcat -f '%R%s' output piped to python -m shardbus.audit.dump --framing length",
        decode=_length_framed,
        rejects=(DecodeError,),
        valid=_length_framed_records(),
        hostile=byte_mutations(_length_framed_records()),
        accepted=_dump_accepted,
    ),
)

TARGETS_BY_NAME = {target.name: target for target in TARGETS}
