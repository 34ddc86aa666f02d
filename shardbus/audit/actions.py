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
#: A holder was torn down.
HOLDER_TORN_DOWN = "holder.torn_down"
#: A holder went back to the warm pool.
HOLDER_RETURNED = "holder.returned"
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


def lifecycle_action(kind: EventKind) -> str:
    """Return the action name a lifecycle event appears under, such as "lease.released"."""
    noun, _, verb = str(kind.value).partition("_")
    return f"{noun}.{verb}" if verb else noun
