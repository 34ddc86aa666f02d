"""What `shardbus secret put` and `rotate` print about the stored version."""

from __future__ import annotations

from shardbus.cli.secret_commands import _print_stored
from shardbus.sharing.fragmentation import Policy
from shardbus.store.secrets import StoredVersion


def stored_version(secret_length: int, lifecycle: str, holders: tuple[str, ...]) -> StoredVersion:
    policy = Policy(fragments=5, threshold=3)
    return StoredVersion(
        name="db/password", version=2, fragments=policy.fragments, threshold=policy.threshold,
        lifecycle=lifecycle, holders=holders, fragment_size=policy.fragment_size(secret_length),
    )


def test_put_output_shows_fragment_size(capsys):
    _print_stored("stored", stored_version(32, "pooled", ("h1", "h2", "h3", "h4", "h5")))

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "stored db/password version 2: 3-of-5, 32 bytes per fragment, pooled"
    assert lines[1] == "holders: h1, h2, h3, h4, h5"


def test_rotate_output_large_secret(capsys):
    # A 4096-byte secret is above the direct limit: 32 + ceil((4096 + 28) / 3).
    _print_stored("rotated", stored_version(4096, "per_operation", ()))

    lines = capsys.readouterr().out.splitlines()
    assert lines == ["rotated db/password version 2: 3-of-5, 1407 bytes per fragment, per_operation"]
