"""Extract the HPKE test vectors that cover shardbus's envelope suites.

Reads the RFC 9180 vectors (HPKE/test-vectors.json) and the HPKE-PQ vectors
(HPKE/hpke-pq-test-vectors.json) from the installed cryptography_vectors
package and writes tests/vectors/hpke.json. Run it from the repository root:

    python tests/vectors/extract_hpke.py

Only base mode (0) with HKDF-SHA256 is kept, for the X25519 KEM (0x0020)
and the ML-KEM-768 + X25519 hybrid KEM (0x647A). Each vector keeps its first
encryption only, because pyca/cryptography's single-shot API can decrypt
only sequence number 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import cryptography_vectors

MODE_BASE = 0
KDF_HKDF_SHA256 = 0x0001
KEMS = {0x0020: "x25519", 0x647A: "mlkem768-x25519"}
SOURCES = ("HPKE/test-vectors.json", "HPKE/hpke-pq-test-vectors.json")
OUTPUT = Path(__file__).with_name("hpke.json")


def main() -> None:
    vectors = []
    for source in SOURCES:
        with cryptography_vectors.open_vector_file(source, "r") as file:
            for vector in json.load(file):
                if vector["mode"] != MODE_BASE or vector["kdf_id"] != KDF_HKDF_SHA256:
                    continue
                # The export-only AEAD (0xFFFF) has no encryptions to check.
                if vector["kem_id"] not in KEMS or not vector["encryptions"]:
                    continue
                first = vector["encryptions"][0]
                vectors.append(
                    {
                        "source": source,
                        "kem": KEMS[vector["kem_id"]],
                        "kem_id": vector["kem_id"],
                        "kdf_id": vector["kdf_id"],
                        "aead_id": vector["aead_id"],
                        "info": vector["info"],
                        "skRm": vector["skRm"],
                        "pkRm": vector["pkRm"],
                        "enc": vector["enc"],
                        "aad": first["aad"],
                        "ct": first["ct"],
                        "pt": first["pt"],
                    }
                )
    document = {
        "description": "HPKE base-mode vectors for the shardbus envelope KEMs, first encryption only",
        "cryptography_vectors_version": cryptography_vectors.__version__,
        "vectors": vectors,
    }
    OUTPUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUTPUT}")


if __name__ == "__main__":
    main()
