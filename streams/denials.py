"""How the authorizer replies to a request it rejects.

A denial after the signature check is the operation's final reply, so it is
claimed in the reply ledger like any other (see streams.replies). A denial
before the signature check (invalid_request, unknown_app, bad_signature) is
not claimed and is not sent at all once the operation id is known: anyone
may write to ``{p}.requests``, and a forged record must not be able to
send the reply to, or block the reply of, an operation that a real
application started.

A replayed operation id is different: the copy carries the app's valid
signature, so its replayed_operation denial is claimed like the others. An
operation whose request was copied while it was in flight therefore ends
with replayed_operation instead of a lease.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgpack

from schemas import codec
from schemas.fields import HEX32_PATTERN, NAME_PATTERN
from schemas.messages import ErrorReply, LeaseReply, Reason, ReleaseRequest
from schemas.topics import Topics
from shardbus.audit import AuditUnavailable
from shardbus.errors import DecodeError
from streams.admission import UNAUTHENTICATED_REASONS
from streams.outbox import Outbox
from streams.replies import ReplyLedger
from streams.topic_check import TopicCheck

log = logging.getLogger(__name__)

_OPERATION_ID = re.compile(HEX32_PATTERN)
_APP_ID = re.compile(NAME_PATTERN)
_MAX_DETAIL = 2048


def readable_ids(payload: bytes) -> tuple[str, str] | None:
    """Return (operation id, app id) from an undecodable request, if both can be read and it is no release.

    The payload failed strict decoding, so it is unpacked leniently, and the
    two ids are kept only when each matches its pattern. Binary fields are
    allowed, because every request has some (its keys and signature), and
    msgpack bounds each by the payload's own length.
    """
    try:
        document: Any = msgpack.unpackb(payload, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception:  # noqa: BLE001 - any failure only means that no ids can be read.
        return None
    if not isinstance(document, dict) or document.get("type") == ReleaseRequest.type_name:
        # A damaged release is no request, so it gets no ErrorReply.
        return None
    operation_id, app_id = document.get("operation_id"), document.get("app_id")
    if not isinstance(operation_id, str) or not _OPERATION_ID.fullmatch(operation_id):
        return None
    if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
        return None
    return operation_id, app_id


class Denials:
    """Sends ErrorReplies for rejected requests, with their audit records."""

    def __init__(
        self,
        outbox: Outbox,
        ledger: ReplyLedger,
        topic_check: TopicCheck,
        *,
        registered_apps: frozenset[str],
        seen: Any,
    ) -> None:
        self._outbox = outbox
        self._ledger = ledger
        self._topic_check = topic_check
        self._registered_apps = registered_apps
        # A coroutine function telling whether an operation id passed the
        # signature check before (RequestChecks.seen).
        self._seen = seen

    async def deny(
        self,
        operation_id: str,
        app_id: str,
        reason: Reason,
        detail: str,
        *,
        secret_name: str = "",
        secret_version: int = 0,
        holders: tuple[str, ...] = (),
    ) -> None:
        """Audit the denial of one request, then send its ErrorReply if the rules above allow.

        Raises shardbus.audit.AuditUnavailable, before sending anything,
        when the record was not written, unless `reason` is audit_unavailable.
        """
        reason = Reason(reason)
        log.info(
            "denied operation %s of app %s on secret %r: %s (%s)%s",
            operation_id, app_id, secret_name, reason, detail,
            f" holders {', '.join(holders)}" if holders else "",
        )
        reply = ErrorReply(
            operation_id=operation_id,
            app_id=app_id,
            reason=reason,
            detail=detail[:_MAX_DETAIL],
            holders=holders,
        )
        if reason in UNAUTHENTICATED_REASONS:
            outcome, key, encoded = await self._decide_unclaimed(reply)
        else:
            outcome, key, encoded = await self._decide_claimed(reply)
        # The record comes before the reply, as for every decision. The one
        # exception is audit_unavailable itself: its record cannot be written,
        # and the reply acts on nothing, it only ends the operation.
        try:
            await self._outbox.audit(
                "request.denied",
                operation_id=operation_id,
                app_id=app_id,
                secret_name=secret_name,
                secret_version=secret_version,
                outcome=outcome,
                reason=str(reason),
                detail=detail,
            )
        except AuditUnavailable:
            if reason != Reason.AUDIT_UNAVAILABLE:
                raise
            log.error("sending the audit_unavailable reply of operation %s without its audit record", operation_id)
        if encoded is not None:
            await self._outbox.send_encoded(self._outbox.topics.replies(app_id), key, encoded)

    async def _decide_unclaimed(self, reply: ErrorReply) -> tuple[str, bytes, bytes | None]:
        """Return the outcome, and the key and bytes to send unless the outcome is not_sent."""
        operation_id = reply.operation_id
        if await self._seen(operation_id) or await self._ledger.stored(operation_id) is not None:
            log.warning(
                "no %s reply sent for operation %s: a signed request with this id exists, "
                "so this record is a forgery or a corrupted copy",
                reply.reason, operation_id,
            )
            return "not_sent", b"", None
        topic = self._outbox.topics.replies(reply.app_id)
        if reply.app_id not in self._registered_apps and not await self._topic_check.exists(topic):
            # Sending would make a broker with automatic topic creation
            # create a topic for an app id that anyone can invent.
            log.warning("no %s reply sent for operation %s: reply topic %s does not exist", reply.reason, operation_id, topic)
            return "not_sent", b"", None
        return "sent", Topics.partition_key(reply), codec.encode(reply)

    async def _decide_claimed(self, reply: ErrorReply) -> tuple[str, bytes, bytes | None]:
        """Claim the reply; return the outcome, and the key and bytes to send unless it is not_sent."""
        encoded = codec.encode(reply)
        key = reply.operation_id.encode()
        stored = await self._ledger.claim(reply.operation_id, encoded)
        if stored is None:
            return "sent", key, encoded
        if _same_decision(stored, reply):
            # The same record processed again after a crash: the first run
            # may have claimed the reply without sending it.
            return "sent_again", key, stored
        log.warning(
            "no %s reply sent for operation %s: the operation already has its final reply",
            reply.reason, reply.operation_id,
        )
        return "not_sent", b"", None


def _same_decision(stored: bytes, reply: ErrorReply) -> bool:
    try:
        previous = codec.decode(stored, (LeaseReply, ErrorReply))
    except DecodeError:
        return False
    return isinstance(previous, ErrorReply) and previous.reason == reply.reason and previous.app_id == reply.app_id
