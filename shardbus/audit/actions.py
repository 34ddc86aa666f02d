"""The audit action names that the replay understands.

Services may write other actions too. The replay shows them in the
operation's timeline, but only the names here drive its status and anomaly
checks. Lifecycle events appear in timelines under the action made from
their kind: the first "_" becomes ".", so ``holders_loaded`` reads
``holders.loaded``.
"""

from __future__ import annotations

from schemas.holders import EventKind

#: The authorizer admitted a request (outcome "accepted").
REQUEST_ACCEPTED = "request.accepted"
#: The authorizer rejected a request and replied with an ErrorReply (reason: its code).
REQUEST_DENIED = "request.denied"
#: A FetchCommand went to a holder (holder_id set).
FETCH_SENT = "fetch.sent"
#: The reassembler accepted a holder's fragment (holder_id set).
FRAGMENT_RECEIVED = "fragment.received"
#: The reassembler rejected a holder's fragment (reason, such as "fragment_corrupted").
FRAGMENT_REJECTED = "fragment.rejected"
#: The reassembler sent the lease.
LEASE_ISSUED = "lease.issued"
#: The reassembler replied with an error after the request was accepted (reason: its code).
OPERATION_FAILED = "operation.failed"
#: The authorizer verified the application's signed release of its lease.
LEASE_RELEASED = "lease.released"
#: The lease reached its expiry without a release.
LEASE_EXPIRED = "lease.expired"
#: Per-operation holders were loaded for the operation.
HOLDERS_LOADED = "holders.loaded"
#: The provisioner handed a holder out (outcome: its lifecycle, "pooled" or "per_operation").
HOLDER_PROVISIONED = "holder.provisioned"
#: The provisioner stopped a holder and deleted its topic.
HOLDER_TORN_DOWN = "holder.torn_down"
#: The provisioner found a holder dead (its process exited or its heartbeats stopped) and stopped what was left.
HOLDER_FAILED = "holder.failed"
#: A pooled holder's part in an operation ended, and it keeps its fragment for the next one.
HOLDER_RETURNED = "holder.returned"
#: The repair moved a failed holder's placement to a new holder (holder_id: the failed holder).
HOLDER_REPLACED = "holder.replaced"
#: The repair could not replace a failed holder, for example because its fragment has no backup copy.
HOLDER_REPLACE_FAILED = "holder.replace_failed"
#: The repair loaded a failed holder's fragment from the backup store onto a new holder (holder_id: the new holder).
FRAGMENT_RESTORED = "fragment.restored"
#: The controlling domain stored the first version of a secret.
SECRET_STORED = "secret.stored"
#: The controlling domain stored a new version of a secret.
SECRET_ROTATED = "secret.rotated"
#: The controlling domain destroyed a secret's fragments and forgot it.
SECRET_DELETED = "secret.deleted"

#: Actions that reply to the application: one per operation is expected.
FINAL_REPLIES = frozenset({REQUEST_DENIED, LEASE_ISSUED, OPERATION_FAILED})

#: Reason code of a fragment that did not match its commitment.
FRAGMENT_CORRUPTED = "fragment_corrupted"

#: Reason code of a record written more than the audit log's timeout after its
#: action, because the audit log was unavailable or slow then (see provisioner.holder_audit).
RECORDED_LATE = "recorded_late"

#: Holder actions that happen to every holder. Without an operation they are
#: shown only in a holder's own timeline (``replay --holder``).
ROUTINE_HOLDER_ACTIONS = frozenset({HOLDER_PROVISIONED, HOLDER_RETURNED, HOLDER_TORN_DOWN})


def lifecycle_action(kind: EventKind) -> str:
    """Return the action name a lifecycle event appears under, such as "lease.released"."""
    noun, _, verb = str(kind.value).partition("_")
    return f"{noun}.{verb}" if verb else noun
