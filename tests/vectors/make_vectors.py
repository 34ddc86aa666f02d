"""Generate the known-answer vectors of the fragmentation core.

Writes shamir.json, fragmentation.json and keys.json next to this script.
Run it from the repository root:

    PYTHONPATH=. python tests/vectors/make_vectors.py

The randomness comes from SHAKE-256 over a fixed seed, so a rerun writes the
same files. Every vector records the exact random bytes that its split
consumed, in order, as "randomness", so tests/core/test_vectors.py replays
them without this script. A change to any of these files means that the
output of split, the fragment encoding or a key derivation changed, which
breaks compatibility with stored fragments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shardbus.crypto import aead
from shardbus.crypto.encoding import encode_fields
from shardbus.crypto.keys import MasterKey
from shardbus.errors import CombineError
from shardbus.sharing import shamir
from shardbus.sharing.fragmentation import Policy, split_secret

HERE = Path(__file__).parent


class RecordingRandom:
    """A deterministic byte stream that remembers what it handed out."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode()
        self._counter = 0
        self.recorded = bytearray()

    def randbytes(self, count: int) -> bytes:
        self._counter += 1
        block = hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(count)
        self.recorded += block
        return block


def stream(seed: str, count: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(count)


def shamir_vectors() -> dict:
    valid = []
    cases = [(1, 2, 2), (16, 2, 3), (32, 3, 5), (33, 5, 9), (64, 7, 7), (100, 10, 20)]
    for number, (length, threshold, count) in enumerate(cases, start=1):
        secret = stream(f"shamir secret {number}", length)
        random = RecordingRandom(f"shamir {number}")
        shares = shamir.split(secret, threshold, count, randbytes=random.randbytes)
        valid.append(
            {
                "number": number,
                "secret": secret.hex(),
                "threshold": threshold,
                "count": count,
                "randomness": random.recorded.hex(),
                "shares": [{"x": share.x, "y": share.y.hex()} for share in shares],
            }
        )

    base = valid[2]
    shares = base["shares"]
    invalid_cases = [
        ("fewer shares than the threshold", shares[:2], "need at least 3 shares"),
        ("duplicate x-coordinate", [shares[0], shares[1], shares[1]], "duplicate share x-coordinate 2"),
        ("x-coordinate zero", [{"x": 0, "y": shares[0]["y"]}, shares[1], shares[2]], "x-coordinate must be in 1..255"),
        ("x-coordinate above 255", [{"x": 256, "y": shares[0]["y"]}, shares[1], shares[2]], "x-coordinate must be in 1..255"),
        ("mismatched lengths", [shares[0], shares[1], {"x": 3, "y": shares[2]["y"][:-2]}], "same length"),
    ]
    invalid = []
    for number, (description, case_shares, message) in enumerate(invalid_cases, start=1):
        try:
            shamir.combine([shamir.Share(s["x"], bytes.fromhex(s["y"])) for s in case_shares], 3)
        except CombineError as error:
            assert message in str(error), (description, error)
        else:
            raise AssertionError(f"invalid vector {description!r} combined without an error")
        invalid.append(
            {
                "number": number,
                "description": description,
                "threshold": 3,
                "shares": case_shares,
                "error": "CombineError",
                "message": message,
            }
        )
    return {
        "description": "Shamir over GF(2^8) with polynomial 0x11B; share x = 1..count; "
        "randomness is consumed one coefficient at a time, degree 1 first",
        "valid": valid,
        "invalid": invalid,
    }


def fragmentation_vectors() -> dict:
    vectors = []
    cases = [
        ("shamir", 32, Policy(5, 3)),
        ("krawczyk", 2000, Policy(5, 3)),
        ("krawczyk", 24, Policy(4, 2, direct_limit=0)),
        ("shamir", 1024, Policy(9, 5)),
    ]
    master = MasterKey(stream("fragmentation master key", 32), 1)
    for number, (scheme, length, policy) in enumerate(cases, start=1):
        secret = stream(f"fragmentation secret {number}", length)
        secret_id = f"vectors/secret-{number}"
        verify_key = master.verify_key(secret_id, number)
        random = RecordingRandom(f"fragmentation {number}")
        fragment_set = split_secret(
            secret, policy, secret_id=secret_id, version=number, verify_key=verify_key, randbytes=random.randbytes
        )
        assert fragment_set.fragments[0].scheme == scheme
        vectors.append(
            {
                "number": number,
                "scheme": scheme,
                "secret": secret.hex(),
                "fragments": policy.fragments,
                "threshold": policy.threshold,
                "direct_limit": policy.direct_limit,
                "secret_id": secret_id,
                "version": number,
                "verify_key": verify_key.hex(),
                "randomness": random.recorded.hex(),
                "encoded_fragments": [fragment.to_bytes().hex() for fragment in fragment_set.fragments],
                "commitments": {str(index): value.hex() for index, value in fragment_set.commitments.items()},
                "digest": fragment_set.digest.hex(),
            }
        )
    return {
        "description": "split_secret outputs for fixed randomness; verify keys come from master_key",
        "master_key": master.to_text().strip(),
        "vectors": vectors,
    }


def keys_vectors() -> dict:
    master = MasterKey(stream("keys master key", 32), 3)
    derivations = []

    def record(kind: str, arguments: list, info: bytes, key: bytes) -> None:
        derivations.append({"kind": kind, "arguments": arguments, "info": info.hex(), "key": key.hex()})

    for secret_id, version, index, holder_id in (("db/password", 1, 1, "holder-a"), ("api/key", 7, 255, "h-9")):
        record(
            "fragment_key",
            [secret_id, version, index, holder_id],
            encode_fields("shardbus/v1/fragment", secret_id, version, index, holder_id, master.version),
            master.fragment_key(secret_id, version, index, holder_id),
        )
    record("mapping_key", [], encode_fields("shardbus/v1/mapping", master.version), master.mapping_key())
    for secret_id, version in (("db/password", 1), ("db/password", 2)):
        record(
            "verify_key",
            [secret_id, version],
            encode_fields("shardbus/v1/verify", secret_id, version, master.version),
            master.verify_key(secret_id, version),
        )
    record("audit_key", [], encode_fields("shardbus/v1/audit", master.version), master.audit_key())

    sealed = []
    ids = {"secret_id": "db/password", "version": 1, "index": 2, "holder_id": "holder-b", "key_version": 3}
    key = master.fragment_key("db/password", 1, 2, "holder-b")
    plaintext = stream("sealed fragment plaintext", 40)
    random = RecordingRandom("aead 1")
    blob = aead.seal_fragment(key, plaintext, randbytes=random.randbytes, **ids)
    sealed.append(
        {
            "ids": ids,
            "key": key.hex(),
            "plaintext": plaintext.hex(),
            "randomness": random.recorded.hex(),
            "blob": blob.hex(),
        }
    )
    return {
        "description": "HKDF-SHA256 derivations from a fixed master key, and a sealed fragment",
        "master_key": master.to_text().strip(),
        "derivations": derivations,
        "sealed_fragments": sealed,
    }


def main() -> None:
    for name, make in (("shamir", shamir_vectors), ("fragmentation", fragmentation_vectors), ("keys", keys_vectors)):
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(make(), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
