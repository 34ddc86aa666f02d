"""The authorizer's checks of one decoded request, in the order the design fixes.

1. the app is registered in the policy file;
2. the Ed25519 signature over ``request.signing_bytes()`` verifies;
3. the request is not older than ``policy.max_request_age_s``, nor issued
   more than ``max_skew_s`` in the future;
4. the operation id was not seen before;
5. the policy grants the app this operation on this secret;
6. the secret exists in the mapping table.

Each failed check raises Denied with the stable reason code of the ErrorReply.
Whether enough holders are alive is checked later, when the fetches are
planned, because only then are the holders known.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from schemas.messages import OperationRequest, Reason
from shardbus.crypto import signing
from shardbus.errors import Denied, IntegrityError
from shardbus.policy import AppPolicy, Grant, Policy
from shardbus.store.mapping import MappingTable, SecretRecord, VersionRecord

#: How far in the future a request's ``issued_at_ms`` may lie, in seconds,
#: to allow for clocks that are not quite in step.
DEFAULT_MAX_SKEW_S = 5

#: Reasons whose check comes before the signature: the request is not yet
#: known to come from the app it names.
UNAUTHENTICATED_REASONS = frozenset({Reason.INVALID_REQUEST, Reason.UNKNOWN_APP, Reason.BAD_SIGNATURE})


@dataclass(frozen=True)
class Admission:
    """A request that passed every check, with what the checks looked up."""

    request: OperationRequest
    app: AppPolicy
    grant: Grant
    record: SecretRecord
    version: VersionRecord


class RequestChecks:
    """Runs the checks of the module docstring against one policy and one mapping table."""

    def __init__(
        self,
        policy: Policy,
        mapping: MappingTable,
        redis: Redis,
        prefix: str,
        *,
        max_skew_s: int = DEFAULT_MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._mapping = mapping
        self._redis = redis
        self._prefix = prefix
        self._max_skew_s = max_skew_s
        self._clock = clock

    async def admit(self, request: OperationRequest, partition: int, offset: int) -> Admission:
        """Return the Admission of `request`, read at `partition` and `offset`, or raise Denied."""
        app = self.policy.app(request.app_id)
        if app is None:
            raise Denied(Reason.UNKNOWN_APP,
                         f"app {request.app_id!r} is not in the policy the authorizer loaded at start-up; "
                         "an app added with 'shardbus app add' since then needs a restart of the authorizer")
        try:
            signing.verify(app.verify_key, request.signing_bytes(), request.signature)
        except IntegrityError:
            raise Denied(
                Reason.BAD_SIGNATURE, f"the signature does not verify with the key registered for app {request.app_id!r}"
            ) from None

        self._check_age(request)
        await self._check_not_seen(request, partition, offset)

        grant = app.grant_for(request.secret_name, str(request.operation))
        if grant is None:
            raise Denied(
                Reason.NOT_GRANTED,
                f"app {request.app_id!r} has no grant for {request.operation!s} on {request.secret_name!r}",
            )
        record = await self._mapping.get(request.secret_name)
        if record is None:
            raise Denied(Reason.SECRET_NOT_FOUND, f"no secret named {request.secret_name!r} is stored")
        return Admission(request, app, grant, record, record.current_version())

    def _check_age(self, request: OperationRequest) -> None:
        now_ms = int(self._clock() * 1000)
        age_ms = now_ms - request.issued_at_ms
        max_age_ms = self.policy.max_request_age_s * 1000
        if age_ms > max_age_ms:
            raise Denied(
                Reason.STALE_REQUEST,
                f"issued {age_ms} ms ago, more than the allowed {max_age_ms} ms; send a new request",
            )
        if -age_ms > self._max_skew_s * 1000:
            raise Denied(
                Reason.STALE_REQUEST,
                f"issued {-age_ms} ms in the future, more than the allowed {self._max_skew_s * 1000} ms; "
                "check the app's clock",
            )

    async def _check_not_seen(self, request: OperationRequest, partition: int, offset: int) -> None:
        # The key must outlive every moment at which a copy of the request
        # would still pass the age check: issued up to max_skew_s in the
        # future, accepted until max_request_age_s after issue.
        ttl_s = 2 * self.policy.max_request_age_s + self._max_skew_s
        key = f"{self._prefix}:seen:{request.operation_id}"
        position = f"{partition}:{offset}".encode()
        if await self._redis.set(key, position, nx=True, ex=ttl_s):
            return
        first = await self._redis.get(key)
        if first == position:
            # The same record processed again after a crash, not a replay.
            return
        raise Denied(
            Reason.REPLAYED_OPERATION,
            f"operation id {request.operation_id} was already used by the record at "
            f"partition:offset {(first or b'?').decode(errors='replace')}; use a new operation id",
        )

    async def seen(self, operation_id: str) -> bool:
        """Tell whether a request with this operation id passed the signature check before."""
        return bool(await self._redis.exists(f"{self._prefix}:seen:{operation_id}"))
