"""Operation timelines: the audit records and lifecycle events of one operation, in order.

A ``Timeline`` collects what happened to one operation id. It is complete
when the application got its final reply, the lease (if one was issued)
was released or expired, and every per-operation holder loaded for it was
torn down or returned. ``anomalies()`` lists what an incident responder
should look at. Fields hold ids, codes and detail text only, never secret
material, because audit records and lifecycle events carry nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shardbus.audit import actions

# Characters of a rejection's detail kept as its reason when no code was given.
_MAX_WHY = 120

#: Events kept per timeline. Further events are counted, not kept, so one
#: runaway operation cannot exhaust memory.
MAX_EVENTS = 512


class Status(enum.StrEnum):
    """The state in which a timeline was flushed to the output."""

    COMPLETE = "complete"
    #: Flushed because the replay had too many open operations.
    EVICTED = "incomplete: evicted"
    #: Still open when the replay reached the end of the topics.
    OPEN_AT_END = "incomplete: open at end"


@dataclass(frozen=True)
class Event:
    """One step of a timeline, from an audit record or a lifecycle event."""

    at_ms: int
    #: The audit record's actor, or "lifecycle" for a lifecycle event.
    source: str
    action: str
    holder_id: str = ""
    outcome: str = ""
    reason: str = ""
    detail: str = ""
    #: Whether the signature of the audit record or lifecycle event
    #: verified, or None when the replay was given no key.
    verified: bool | None = None
    #: Where the event was read, as "topic:partition@offset".
    where: str = ""

    def to_json(self) -> dict:
        return {
            "at_ms": self.at_ms, "source": self.source, "action": self.action, "holder_id": self.holder_id,
            "outcome": self.outcome, "reason": self.reason, "detail": self.detail,
            "verified": self.verified, "where": self.where,
        }


@dataclass(frozen=True)
class Anomaly:
    """A finding in the trail that deserves a look, with a sentence that describes it."""

    kind: str
    detail: str
    operation_id: str = ""
    app_id: str = ""
    holder_id: str = ""
    at_ms: int = 0

    def to_json(self) -> dict:
        return {
            "type": "anomaly", "kind": self.kind, "detail": self.detail, "operation_id": self.operation_id,
            "app_id": self.app_id, "holder_id": self.holder_id, "at_ms": self.at_ms,
        }


@dataclass
class Timeline:
    """Everything the trail shows about one operation."""

    operation_id: str
    app_id: str = ""
    secret_name: str = ""
    secret_version: int = 0
    first_ms: int = 0
    last_ms: int = 0
    events: list[Event] = field(default_factory=list)
    events_not_kept: int = 0
    decision: str = ""
    replies: list[str] = field(default_factory=list)
    reply_reason: str = ""
    holders_asked: set[str] = field(default_factory=set)
    holders_loaded: set[str] = field(default_factory=set)
    holders_answered: set[str] = field(default_factory=set)
    #: Holder id to the reason code of its rejected fragment, or the detail when no code was given.
    holders_rejected: dict[str, str] = field(default_factory=dict)
    holders_done: set[str] = field(default_factory=set)
    holders_named: set[str] = field(default_factory=set)
    lease_issued: bool = False
    lease_released: bool = False
    lease_expired: bool = False
    status: Status | None = None

    def add(self, event: Event, *, app_id: str = "", secret_name: str = "", secret_version: int = 0,
            holders: tuple[str, ...] = ()) -> None:
        """Add one event and update the decision, replies, holders and lease state from it."""
        if not self.events and not self.events_not_kept:
            self.first_ms = event.at_ms
        self.first_ms = min(self.first_ms, event.at_ms)
        self.last_ms = max(self.last_ms, event.at_ms)
        self.app_id = self.app_id or app_id
        self.secret_name = self.secret_name or secret_name
        self.secret_version = self.secret_version or secret_version
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        else:
            self.events_not_kept += 1
        self._apply(event, holders)

    def _apply(self, event: Event, holders: tuple[str, ...]) -> None:
        action, holder = event.action, event.holder_id
        if holder:
            self.holders_named.add(holder)
        self.holders_named.update(holders)
        if action == actions.REQUEST_ACCEPTED:
            self.decision = "accepted"
        elif action == actions.REQUEST_DENIED:
            self.decision = "denied"
        elif action == actions.FETCH_SENT and holder:
            self.holders_asked.add(holder)
        elif action == actions.HOLDERS_LOADED or (action == actions.HOLDER_PROVISIONED and _per_operation(event)):
            self.holders_loaded.update(holders or ((holder,) if holder else ()))
        elif action == actions.FRAGMENT_RECEIVED and holder:
            self.holders_answered.add(holder)
        elif action == actions.FRAGMENT_REJECTED and holder:
            self.holders_rejected[holder] = event.reason or event.detail[:_MAX_WHY] or "rejected"
        elif action in (actions.HOLDER_TORN_DOWN, actions.HOLDER_FAILED, actions.HOLDER_RETURNED):
            self.holders_done.update(holders or ((holder,) if holder else ()))
        elif action == actions.LEASE_RELEASED:
            self.lease_released = True
        elif action == actions.LEASE_EXPIRED:
            self.lease_expired = True
        if action in actions.FINAL_REPLIES:
            self.replies.append(action)
            self.reply_reason = self.reply_reason or event.reason
            if action == actions.LEASE_ISSUED:
                self.lease_issued = True
            if action == actions.OPERATION_FAILED and event.reason == actions.FRAGMENT_CORRUPTED and holder:
                self.holders_rejected.setdefault(holder, event.reason)

    @property
    def reply(self) -> str:
        """The first final reply's action, or "" before one."""
        return self.replies[0] if self.replies else ""

    def is_complete(self) -> bool:
        """Return whether nothing more is expected for this operation."""
        if not self.replies:
            return False
        if self.lease_issued and not (self.lease_released or self.lease_expired):
            return False
        return self.holders_loaded <= self.holders_done

    def corrupted_holders(self) -> list[str]:
        """Return the holders whose requested fragment was rejected, sorted.

        A rejection with the reason code ``fragment_corrupted`` counts, and so
        does any rejection of a holder that was asked for its fragment,
        because the fragment it was asked for failed to open or verify.
        """
        asked = self.holders_asked | self.holders_loaded
        return sorted(
            holder for holder, why in self.holders_rejected.items()
            if why == actions.FRAGMENT_CORRUPTED or holder in asked
        )

    def anomalies(self) -> list[Anomaly]:
        """Return what looks wrong in this operation's trail."""
        found: list[Anomaly] = []

        def flag(kind: str, detail: str, holder_id: str = "") -> None:
            found.append(Anomaly(kind, detail, self.operation_id, self.app_id, holder_id, self.last_ms))

        if not self.decision:
            flag("no_request_record", "the request's accept or deny record was not read; it may predate --since")
        if not self.replies:
            flag("no_final_reply", "the application got no final reply in the records read")
        elif len(self.replies) > 1:
            flag("several_replies", f"{len(self.replies)} final replies ({', '.join(self.replies)}); expected one")
        if self.lease_expired and not self.lease_released:
            flag("lease_expired", "the lease expired without being released")
        elif self.lease_issued and not (self.lease_released or self.lease_expired):
            flag("lease_not_ended", "the lease was issued but no release or expiry was recorded")
        asked = self.holders_asked | self.holders_loaded
        for holder in sorted((self.holders_answered | set(self.holders_rejected)) - asked):
            flag("fragment_from_unasked_holder", f"holder {holder} sent a fragment but was not asked", holder)
        for holder in self.corrupted_holders():
            why = self.holders_rejected[holder]
            flag("fragment_corrupted", f"holder {holder} sent a fragment that was rejected ({why})", holder)
        for holder in sorted(self.holders_loaded - self.holders_done):
            flag("holder_not_torn_down", f"per-operation holder {holder} was loaded but not torn down", holder)
        unverified = sum(1 for event in self.events if event.verified is False)
        if unverified:
            flag("unverified_record", f"{unverified} records or events of this operation fail their signature check")
        if self.events_not_kept:
            flag("too_many_events", f"{self.events_not_kept} events beyond the first {MAX_EVENTS} were not kept")
        return found

    def involves_holder(self, holder_id: str) -> bool:
        """Return whether `holder_id` took part in any event of this operation."""
        return holder_id in self.holders_named

    def to_json(self) -> dict:
        return {
            "type": "operation", "operation_id": self.operation_id, "app_id": self.app_id,
            "secret_name": self.secret_name, "secret_version": self.secret_version,
            "status": str(self.status) if self.status else "", "decision": self.decision,
            "reply": self.reply, "reason": self.reply_reason, "first_ms": self.first_ms, "last_ms": self.last_ms,
            "holders_asked": sorted(self.holders_asked), "holders_loaded": sorted(self.holders_loaded),
            "holders_answered": sorted(self.holders_answered),
            "holders_rejected": dict(sorted(self.holders_rejected.items())),
            "holders_torn_down": sorted(self.holders_done),
            "events": [event.to_json() for event in self.events], "events_not_kept": self.events_not_kept,
            "anomalies": [anomaly.to_json() for anomaly in self.anomalies()],
        }


def _per_operation(event: Event) -> bool:
    # The provisioner's audit record carries the lifecycle as its outcome, its lifecycle event as its detail.
    return "per_operation" in (event.outcome, event.detail)
