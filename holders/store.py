"""The sealed fragments a holder keeps in memory.

A holder never has the key to a fragment it stores: each blob is sealed with
AES-256-GCM under a fragment key that arrives only inside a fetch command.
The blobs are therefore ciphertext, but they are still wiped when dropped,
because a holder should leave nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.holders import MAX_LOADED_FRAGMENTS
from shardbus.crypto.wipe import wipe

#: Maximum number of fragments one holder keeps, the number one heartbeat can list.
MAX_FRAGMENTS = MAX_LOADED_FRAGMENTS


@dataclass
class StoredFragment:
    """One sealed fragment and the ids its fragment key was derived for.

    ``key_slot`` is the holder id bound into the fragment key: the holder's
    own id for a pooled placement, or ``backup`` for a copy loaded from the
    backup store.
    """

    secret_name: str
    secret_version: int
    fragment_index: int
    key_version: int
    key_slot: str
    sealed: bytearray = field(repr=False)

    def wipe(self) -> None:
        wipe(self.sealed)


class FragmentStore:
    """Sealed fragments keyed by (secret name, secret version)."""

    def __init__(self, max_fragments: int = MAX_FRAGMENTS) -> None:
        self._fragments: dict[tuple[str, int], StoredFragment] = {}
        self._max_fragments = max_fragments

    def __len__(self) -> int:
        return len(self._fragments)

    def put(self, fragment: StoredFragment) -> None:
        """Store `fragment`, wiping any earlier one of the same secret version.

        Raises OverflowError when the store is full and `fragment` is new.
        """
        key = (fragment.secret_name, fragment.secret_version)
        previous = self._fragments.get(key)
        if previous is None and len(self._fragments) >= self._max_fragments:
            raise OverflowError(f"holder already stores its maximum of {self._max_fragments} fragments")
        self._fragments[key] = fragment
        if previous is not None:
            previous.wipe()

    def get(self, secret_name: str, secret_version: int) -> StoredFragment | None:
        return self._fragments.get((secret_name, secret_version))

    def drop(self, secret_name: str, secret_version: int) -> int:
        """Wipe and remove one version of a secret, or every version if `secret_version` is 0.

        Returns how many fragments were removed.
        """
        if secret_version == 0:
            keys = [key for key in self._fragments if key[0] == secret_name]
        else:
            keys = [key for key in [(secret_name, secret_version)] if key in self._fragments]
        for key in keys:
            self._fragments.pop(key).wipe()
        return len(keys)

    def clear(self) -> None:
        """Wipe and remove every fragment."""
        for fragment in self._fragments.values():
            fragment.wipe()
        self._fragments.clear()

    def loaded(self) -> list[tuple[str, int, int]]:
        """Return (secret name, version, index) of each fragment, sorted."""
        return sorted((f.secret_name, f.secret_version, f.fragment_index) for f in self._fragments.values())
