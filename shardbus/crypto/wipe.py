"""Best-effort zeroing of secret buffers.

`wipe` overwrites a mutable buffer in place, which shortens the time a
secret sits in memory. In CPython that is all it can do:

* `bytes` and `str` are immutable, so a secret held in one cannot be wiped.
  Every `bytes(...)`, slice, `.hex()`, decode or concatenation of a secret
  makes such a copy. So do pyca/cryptography's APIs, which take and return
  `bytes`.
* A `bytearray` that grew was moved, and its old memory was freed without
  being zeroed.
* Freed memory, swap, core dumps and the copies inside OpenSSL are out of
  reach.

Use it on the buffers you own (a `bytearray` read from a socket or file),
and treat secrets as living until the process ends.
"""

from __future__ import annotations


def wipe(buffer: bytearray | memoryview) -> None:
    """Overwrite every byte of a writable buffer with zero, in place."""
    if isinstance(buffer, (bytes, str)):
        raise TypeError(
            f"cannot wipe an immutable {type(buffer).__name__}; keep secrets in a bytearray to wipe them"
        )
    with memoryview(buffer) as view:
        if view.readonly:
            raise TypeError("cannot wipe a read-only buffer")
        # Slice assignment of the same length writes into the existing memory
        # and never reallocates it.
        with view.cast("B") as flat:
            flat[:] = bytes(flat.nbytes)
