"""The reassembler's cryptography: open and check fragments, combine them, seal the lease.

Everything here works on one operation's plan and responses in memory.
Plaintext fragments and the rebuilt secret exist only inside these calls.

NOTE: the fragments and the secret pass through ``bytes`` objects
(cryptography and the fragmentation core return them), which cannot be
wiped, so they stay in memory until the allocator reuses it. See
shardbus.crypto.wipe.
"""

from __future__ import annotations

from schemas.messages import FragmentResponse, LeaseReply, OperationPlan
from schemas.sealed import LeasePayload, PlanContext, fragment_transit_info, lease_info, plan_info
from shardbus.crypto import envelope
from shardbus.errors import CombineError, DecodeError, FragmentCorrupted, IntegrityError
from shardbus.sharing.fragment import Fragment
from shardbus.sharing.fragmentation import combine_fragments, verify_fragment


class FragmentRejected(Exception):
    """A response whose fragment cannot be used; the message says why, never what it contained."""


def open_context(keys: envelope.EnvelopeKeyPair, plan: OperationPlan) -> PlanContext:
    """Open the plan's sealed context; raise IntegrityError or DecodeError if it is not for us."""
    return PlanContext.from_bytes(envelope.open_(keys, plan.sealed_context, info=plan_info(plan.operation_id)))


def open_fragment(
    keys: envelope.EnvelopeKeyPair,
    plan: OperationPlan,
    context: PlanContext,
    expected_index: int,
    response: FragmentResponse,
) -> Fragment:
    """Return the fragment of a successful response after checking it against its commitment.

    Raises FragmentRejected when the envelope does not open for this
    operation, holder and index, when the fragment does not decode or names
    another secret, version or index, or when it fails its commitment.
    """
    if response.fragment_index != expected_index:
        raise FragmentRejected(f"sent index {response.fragment_index}, the plan expects {expected_index}")
    info = fragment_transit_info(plan.operation_id, response.holder_id, expected_index)
    try:
        plaintext = envelope.open_(keys, response.sealed_fragment, info=info)
    except (IntegrityError, DecodeError):
        raise FragmentRejected("the sealed fragment does not open for this operation, holder and index") from None
    try:
        fragment = Fragment.from_bytes(plaintext)
    except DecodeError as exc:
        raise FragmentRejected(f"the fragment does not decode: {exc}") from None
    if (fragment.secret_id, fragment.secret_version, fragment.index) != (
        plan.secret_name, plan.secret_version, expected_index
    ):
        raise FragmentRejected(
            f"the fragment is index {fragment.index} of another secret or version, "
            f"expected index {expected_index} of {plan.secret_name!r} version {plan.secret_version}"
        )
    try:
        verify_fragment(fragment, context.commitments.get(expected_index), verify_key=context.verify_key)
    except FragmentCorrupted:
        raise FragmentRejected(f"fragment {expected_index} does not match its commitment") from None
    return fragment


def seal_lease(plan: OperationPlan, context: PlanContext, fragments: list[Fragment], now_ms: int) -> LeaseReply:
    """Combine the first `plan.threshold` fragments and seal the secret to the app's reply key.

    Raises CombineError or IntegrityError when the fragments, although each
    matches its commitment, do not rebuild a secret with the plan's digest.
    """
    chosen = fragments[: plan.threshold]
    secret = combine_fragments(
        chosen,
        threshold=plan.threshold,
        verify_key=context.verify_key,
        commitments=context.commitments,
        digest=context.digest,
        secret_id=plan.secret_name,
        secret_version=plan.secret_version,
    )
    expires_at_ms = now_ms + plan.lease_ttl_ms
    payload = LeasePayload(operation_id=plan.operation_id, secret=secret, expires_at_ms=expires_at_ms)
    try:
        reply_key = envelope.PublicKey.from_bytes(plan.reply_kem, plan.reply_public_key)
    except DecodeError as exc:
        raise CombineError(f"the plan's reply key is unusable: {exc}") from None
    sealed = envelope.seal(reply_key, payload.to_bytes(), info=lease_info(plan.operation_id, plan.app_id))
    return LeaseReply(
        operation_id=plan.operation_id,
        app_id=plan.app_id,
        expires_at_ms=expires_at_ms,
        sealed_lease=sealed,
    )
