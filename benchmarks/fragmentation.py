"""Time split_secret and combine_fragments for a few secret sizes and policies.

Run from the repository root:

    PYTHONPATH=. python benchmarks/fragmentation.py [--repeat N]

For each case it prints the median split and combine time over N runs
(default 15), the scheme, and the size of one fragment (payload bytes and
encoded bytes). Combine uses the last k fragments, checks their commitments
and the digest, as the reassembler does.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import time

from shardbus.sharing.fragmentation import Policy, combine_fragments, split_secret

# 1 KiB is the default direct_limit, the largest secret plain Shamir handles.
SIZES = [("32 B", 32), ("1 KiB", 1024), ("4 KiB", 4 * 1024), ("1 MiB", 1024 * 1024)]
POLICIES = [Policy(fragments=5, threshold=3), Policy(fragments=9, threshold=5)]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def run_case(secret: bytes, policy: Policy, repeat: int) -> tuple[float, float, str, int, int]:
    verify_key = secrets.token_bytes(32)
    split_times = []
    combine_times = []
    fragment_set = None
    for _ in range(repeat):
        start = time.perf_counter()
        fragment_set = split_secret(secret, policy, secret_id="bench/secret", version=1, verify_key=verify_key)
        split_times.append(time.perf_counter() - start)

        chosen = fragment_set.fragments[-policy.threshold :]
        start = time.perf_counter()
        recovered = combine_fragments(
            chosen,
            threshold=policy.threshold,
            verify_key=verify_key,
            commitments=fragment_set.commitments,
            digest=fragment_set.digest,
        )
        combine_times.append(time.perf_counter() - start)
        if recovered != secret:
            raise SystemExit("combine returned a different secret; the benchmark is invalid")

    fragment = fragment_set.fragments[0]
    return (
        median_ms(split_times),
        median_ms(combine_times),
        fragment.scheme,
        len(fragment.payload),
        len(fragment.to_bytes()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per case; the median is printed (default 15)")
    arguments = parser.parse_args()

    print(f"Python {platform.python_version()} on {platform.machine()}, {arguments.repeat} runs per case, median")
    header = f"{'secret':>7} {'policy':>7} {'scheme':>9} {'split ms':>9} {'combine ms':>11} {'payload B':>10} {'encoded B':>10}"
    print(header)
    print("-" * len(header))
    for label, size in SIZES:
        secret = secrets.token_bytes(size)
        for policy in POLICIES:
            split_ms, combine_ms, scheme, payload, encoded = run_case(secret, policy, arguments.repeat)
            name = f"{policy.threshold}-of-{policy.fragments}"
            print(f"{label:>7} {name:>7} {scheme:>9} {split_ms:9.2f} {combine_ms:11.2f} {payload:10d} {encoded:10d}")


if __name__ == "__main__":
    main()
