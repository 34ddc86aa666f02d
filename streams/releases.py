"""The authorizer's handling of ReleaseRequests: a verified release ends its lease.

An application sends a signed ReleaseRequest on ``{p}.requests`` when it is
done with a lease. The authorizer checks, in this order:

1. the app is registered in the policy file;
2. the Ed25519 signature over ``release.signing_bytes()`` verifies with the
   app's registered key;
3. a lease was issued for the operation (the reassembler recorded it, see
   streams.leases);
4. that lease was issued to the same app.

A release that fails a check gets an audit record ``lease.release_rejected``
with the reason code, then goes to ``{p}.deadletter`` with the reason.
Nothing else happens, so a forged release neither ends a lease nor makes
the provisioner act on its holders.

A release that passes ends the lease in Redis, gets an audit record
``lease.released``, and then the LifecycleEvent ``lease_released`` naming the
lease's holders. A release of a lease that ended already, by a release or by
expiry, gets an audit record ``lease.release_ignored`` and changes nothing.
So a copy of a signed release, replayed later, is harmless, and the release
has no age check.
"""

from __future__ import annotations

import enum
import logging

from schemas.messages import EventKind, ReleaseRequest
from shardbus.crypto import signing
from shardbus.errors import IntegrityError
from shardbus.policy import Policy
from streams.handling import InputRecord
from streams.leases import Claim, Lease, LeaseBook, announce_end
from streams.outbox import Outbox

log = logging.getLogger(__name__)


class Rejection(enum.StrEnum):
    """Reason codes of a rejected release, in audit records and dead letters."""

    UNKNOWN_APP = "unknown_app"
    BAD_SIGNATURE = "bad_signature"
    LEASE_NOT_FOUND = "lease_not_found"
    NOT_LEASE_OWNER = "not_lease_owner"


class Releases:
    """Checks each ReleaseRequest and ends the lease it names; see the module docstring."""

    def __init__(self, *, policy: Policy, leases: LeaseBook, outbox: Outbox) -> None:
        self._policy = policy
        self._leases = leases
        self._outbox = outbox

    async def handle(self, record: InputRecord, release: ReleaseRequest) -> None:
        """Check one decoded release read at `record`, then reject it or end its lease.

        Raises shardbus.audit.AuditUnavailable, and Redis or Kafka errors,
        for the caller to retry; a retry of a half-handled release finishes it.
        """
        operation_id, app_id = release.operation_id, release.app_id
        app = self._policy.app(app_id)
        if app is None:
            await self._reject(record, release, Rejection.UNKNOWN_APP,
                               f"app {app_id!r}, which released operation {operation_id}, is not in the policy file")
            return
        try:
            signing.verify(app.verify_key, release.signing_bytes(), release.signature)
        except IntegrityError:
            await self._reject(record, release, Rejection.BAD_SIGNATURE,
                               f"the signature of the release of operation {operation_id} does not verify "
                               f"with the key registered for app {app_id!r}")
            return

        lease = await self._leases.get(operation_id)
        if lease is None:
            await self._reject(record, release, Rejection.LEASE_NOT_FOUND,
                               f"no lease of operation {operation_id} is recorded: none was issued, "
                               "or its record passed its retention")
            return
        if lease.app_id != app_id:
            # The owner's id stays out of the message, because operators of any app read the dead letters.
            await self._reject(record, release, Rejection.NOT_LEASE_OWNER,
                               f"the lease of operation {operation_id} was issued to another app, not {app_id!r}")
            return

        claim = await self._leases.claim_release(operation_id)
        if claim in (Claim.CLAIMED, Claim.UNANNOUNCED):
            await self._announce(lease, release)
        elif claim is Claim.MISSING:
            await self._reject(record, release, Rejection.LEASE_NOT_FOUND,
                               f"the lease record of operation {operation_id} passed its retention")
        else:
            await self._ignore(lease, claim)

    async def _announce(self, lease: Lease, release: ReleaseRequest) -> None:
        detail = f"released by app {release.app_id} at {release.released_at_ms} ms"
        log.info("app %s released the lease of operation %s on secret %r",
                 lease.app_id, lease.operation_id, lease.secret_name)
        await announce_end(self._outbox, self._leases, lease, EventKind.LEASE_RELEASED, detail)

    async def _ignore(self, lease: Lease, claim: Claim) -> None:
        # claim_release returns only ANNOUNCED or OTHER here, and OTHER means that the lease expired.
        ended = "released already" if claim is Claim.ANNOUNCED else "expired already"
        log.info("ignored a release of operation %s by app %s: the lease was %s",
                 lease.operation_id, lease.app_id, ended)
        await self._outbox.audit(
            "lease.release_ignored", operation_id=lease.operation_id, app_id=lease.app_id,
            secret_name=lease.secret_name, secret_version=lease.secret_version, outcome="ignored",
            detail=f"the lease was {ended}",
        )

    async def _reject(self, record: InputRecord, release: ReleaseRequest, reason: Rejection, detail: str) -> None:
        log.warning("rejected the release of operation %s by app %s at %s[%d]@%d: %s (%s)",
                    release.operation_id, release.app_id, record.topic, record.partition, record.offset,
                    reason, detail)
        # The app id is the one the record claims, which a rejected release does not prove.
        await self._outbox.audit(
            "lease.release_rejected", operation_id=release.operation_id, app_id=release.app_id,
            outcome="rejected", reason=str(reason), detail=detail,
        )
        await self._outbox.dead_letter(record.topic, record.partition, record.offset, record.value,
                                       f"{reason}: {detail}")
