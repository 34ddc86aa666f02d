"""Build what the authorizer sends for an accepted request: the plan and the fetches.

The plan carries the verify key, the commitments and the secret digest
sealed to the reassembler (``plan_info``), and each fetch carries one
fragment key sealed to one holder (``fragment_key_info``). The authorizer
derives these keys from the master key and never sends them in clear.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from schemas.messages import FetchCommand, HolderSlot, OperationPlan, OperationRequest, StoreFragment
from schemas.sealed import PlanContext, fragment_key_info, plan_info
from shardbus.crypto import envelope
from shardbus.crypto.keys import MasterKey
from shardbus.store.mapping import VersionRecord


@dataclass(frozen=True)
class FetchTarget:
    """One holder the authorizer will ask for one fragment.

    ``key_slot`` is the holder id the fragment key is derived for: the
    holder's own id for a pooled placement, ``backup`` for a copy loaded
    from the backup store.
    """

    holder_id: str
    index: int
    public_key: envelope.PublicKey = field(repr=False)
    key_slot: str


@dataclass(frozen=True)
class Planner:
    """Seals plans and fetch commands with the authorizer's keys."""

    master_key: MasterKey
    reassembler_key: envelope.PublicKey

    def plan(
        self,
        request: OperationRequest,
        version: VersionRecord,
        targets: list[FetchTarget],
        *,
        deadline_ms: int,
        lease_ttl_ms: int,
    ) -> OperationPlan:
        """Return the plan of `request`, naming `targets` as the holders to expect."""
        context = PlanContext(
            verify_key=self.master_key.verify_key(request.secret_name, version.version),
            commitments=dict(version.commitments),
            digest=version.digest,
        )
        sealed = envelope.seal(self.reassembler_key, context.to_bytes(), info=plan_info(request.operation_id))
        return OperationPlan(
            operation_id=request.operation_id,
            app_id=request.app_id,
            secret_name=request.secret_name,
            secret_version=version.version,
            operation=request.operation,
            threshold=version.threshold,
            holders=tuple(HolderSlot(holder_id=t.holder_id, index=t.index) for t in targets),
            reply_public_key=request.reply_public_key,
            reply_kem=request.reply_kem,
            deadline_ms=deadline_ms,
            lease_ttl_ms=lease_ttl_ms,
            sealed_context=sealed,
        )

    def fetch(
        self, operation_id: str, secret_name: str, version: VersionRecord, target: FetchTarget, *, deadline_ms: int
    ) -> FetchCommand:
        """Return the fetch command for one target, its fragment key sealed to that holder."""
        fragment_key = self.master_key.fragment_key(secret_name, version.version, target.index, target.key_slot)
        sealed_key = envelope.seal(
            target.public_key,
            fragment_key,
            info=fragment_key_info(operation_id, target.holder_id, target.index),
        )
        return FetchCommand(
            operation_id=operation_id,
            holder_id=target.holder_id,
            secret_name=secret_name,
            secret_version=version.version,
            fragment_index=target.index,
            sealed_fragment_key=sealed_key,
            reassembler_public_key=self.reassembler_key.to_bytes(),
            reassembler_kem=self.reassembler_key.kem,
            deadline_ms=deadline_ms,
        )


def store_command(secret_name: str, version: VersionRecord, target: FetchTarget, sealed_fragment: bytes) -> StoreFragment:
    """Return the command that loads a backup copy into a per-operation holder."""
    return StoreFragment(
        holder_id=target.holder_id,
        secret_name=secret_name,
        secret_version=version.version,
        fragment_index=target.index,
        key_version=version.key_version,
        sealed_fragment=sealed_fragment,
        request_id=uuid.uuid4().hex,
        key_slot=target.key_slot,
    )
