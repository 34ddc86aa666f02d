"""What a holder does with each command on its topic, apart from Kafka.

The three handlers take a decoded message and return the message to send
back. They never raise for anything a sender can cause: a fetch that cannot
be served becomes a FragmentResponse with an error code, a store that cannot
be kept becomes a failed HolderAck.

A fetch opens two layers. The fragment key comes sealed with HPKE to this
holder's key pair, with the operation id, holder id and index in the HPKE
``info``, so a key sealed for another fetch or holder does not open. The
fragment itself is sealed with AES-256-GCM under that key, with the secret
name, version, index, key slot and master key version as associated data.
Both failures give the same ``open_failed``, so a sender learns nothing about
which layer failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from schemas.holders import DestroyFragment, HolderAck, StoreFragment
from schemas.operations import FetchCommand, FragmentError, FragmentResponse
from schemas.sealed import fragment_key_info, fragment_transit_info
from shardbus.crypto import aead, envelope
from shardbus.crypto.wipe import wipe
from shardbus.errors import DecodeError, IntegrityError

from holders.store import FragmentStore, StoredFragment

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandHandler:
    """Applies StoreFragment, DestroyFragment and FetchCommand to one holder's store."""

    def __init__(
        self,
        holder_id: str,
        keypair: envelope.EnvelopeKeyPair,
        store: FragmentStore | None = None,
        *,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.holder_id = holder_id
        self.keypair = keypair
        self.store = store if store is not None else FragmentStore()
        self._clock_ms = clock_ms

    def store_fragment(self, command: StoreFragment) -> HolderAck:
        """Keep the sealed fragment of `command`, replacing one of the same secret version."""
        fragment = StoredFragment(
            secret_name=command.secret_name,
            secret_version=command.secret_version,
            fragment_index=command.fragment_index,
            key_version=command.key_version,
            key_slot=command.key_slot or self.holder_id,
            sealed=bytearray(command.sealed_fragment),
        )
        try:
            self.store.put(fragment)
        except OverflowError as exc:
            fragment.wipe()
            log.warning("rejected fragment %d of %s v%d: %s", command.fragment_index,
                        command.secret_name, command.secret_version, exc)
            return HolderAck(self.holder_id, command.request_id, ok=False, error=str(exc))
        log.info("stored fragment %d of %s v%d (key slot %s, request %s)", command.fragment_index,
                 command.secret_name, command.secret_version, fragment.key_slot, command.request_id)
        return HolderAck(self.holder_id, command.request_id, ok=True, error="")

    def destroy_fragment(self, command: DestroyFragment) -> HolderAck:
        """Wipe the fragments of one secret version, or of every version for version 0."""
        removed = self.store.drop(command.secret_name, command.secret_version)
        versions = "every version" if command.secret_version == 0 else f"v{command.secret_version}"
        log.info("destroyed %d fragments of %s %s (request %s)", removed, command.secret_name, versions,
                 command.request_id)
        return HolderAck(self.holder_id, command.request_id, ok=True, error="")

    def fetch(self, command: FetchCommand) -> FragmentResponse:
        """Serve one fetch: open the fragment and seal it to the reassembler."""
        ids = (command.operation_id, command.secret_name, command.secret_version, command.fragment_index)
        if self._clock_ms() > command.deadline_ms:
            log.info("fetch %s for %s v%d index %d expired before it arrived", *ids)
            return self._failure(command, FragmentError.EXPIRED)
        stored = self.store.get(command.secret_name, command.secret_version)
        if stored is None or stored.fragment_index != command.fragment_index:
            log.info("fetch %s for %s v%d index %d: fragment not loaded", *ids)
            return self._failure(command, FragmentError.NOT_LOADED)

        fragment_key = None
        plaintext = None
        try:
            fragment_key = bytearray(envelope.open_(
                self.keypair,
                command.sealed_fragment_key,
                info=fragment_key_info(command.operation_id, self.holder_id, command.fragment_index),
            ))
            plaintext = bytearray(aead.open_fragment(
                bytes(fragment_key),
                bytes(stored.sealed),
                secret_id=stored.secret_name,
                version=stored.secret_version,
                index=stored.fragment_index,
                holder_id=stored.key_slot,
                key_version=stored.key_version,
            ))
            sealed = envelope.seal(
                envelope.PublicKey.from_bytes(str(command.reassembler_kem), command.reassembler_public_key),
                bytes(plaintext),
                info=fragment_transit_info(command.operation_id, self.holder_id, command.fragment_index),
            )
        except (IntegrityError, DecodeError) as exc:
            log.warning("fetch %s for %s v%d index %d: cannot open the fragment (%s)", *ids,
                        type(exc).__name__)
            return self._failure(command, FragmentError.OPEN_FAILED)
        finally:
            # NOTE: wiping reaches only these mutable copies. The bytes objects
            # that cryptography returns are immutable and stay in memory until
            # the allocator reuses them, which mlockall keeps off swap.
            if fragment_key is not None:
                wipe(fragment_key)
            if plaintext is not None:
                wipe(plaintext)
        log.info("fetch %s for %s v%d index %d: fragment sent sealed to the reassembler", *ids)
        return FragmentResponse(
            operation_id=command.operation_id,
            holder_id=self.holder_id,
            fragment_index=command.fragment_index,
            sealed_fragment=sealed,
            error="",
        )

    def _failure(self, command: FetchCommand, error: FragmentError) -> FragmentResponse:
        return FragmentResponse(
            operation_id=command.operation_id,
            holder_id=self.holder_id,
            fragment_index=command.fragment_index,
            sealed_fragment=b"",
            error=error,
        )
