"""A holder's timeline: every audit record and lifecycle event that names one holder, in order.

``shardbus audit replay --holder H`` prints it after the operations that H
took part in: when H was handed out and for which secret, each fetch and
fragment, each return, and how it ended (torn down, or failed and replaced).
``anomalies()`` lists what an incident responder should look at. Like the
operation timelines, it contains ids, codes and detail text only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shardbus.audit import actions
from shardbus.audit.timeline import MAX_EVENTS, Anomaly, Event

# Actions that show a holder serving a secret, which only a provisioned holder should do.
_SERVING = frozenset({
    actions.FETCH_SENT, actions.FRAGMENT_RECEIVED, actions.FRAGMENT_REJECTED, actions.HOLDER_RETURNED,
})


class HolderStatus(enum.StrEnum):
    """The state in which the records read leave the holder."""

    RUNNING = "running"
    TORN_DOWN = "torn down"
    FAILED = "failed"


@dataclass(frozen=True)
class HolderEvent:
    """One event of a holder's timeline, with the ids it came with."""

    event: Event
    operation_id: str = ""
    secret_name: str = ""
    secret_version: int = 0

    def to_json(self) -> dict:
        return {
            **self.event.to_json(), "operation_id": self.operation_id, "secret_name": self.secret_name,
            "secret_version": self.secret_version,
        }


@dataclass
class HolderTimeline:
    """Everything the trail shows about one holder."""

    holder_id: str
    events: list[HolderEvent] = field(default_factory=list)
    events_not_kept: int = 0
    #: The lifecycles it was provisioned with, such as "pooled".
    provisioned: set[str] = field(default_factory=set)
    #: The secrets it was provisioned for or served, as "name v1".
    secrets: set[str] = field(default_factory=set)
    served: bool = False
    status: HolderStatus = HolderStatus.RUNNING
    replaced: bool = False
    #: The detail of each holder.replace_failed record.
    replace_failures: list[str] = field(default_factory=list)
    late_records: int = 0
    unverified: int = 0

    def add(self, event: Event, *, operation_id: str = "", secret_name: str = "", secret_version: int = 0) -> None:
        """Add one event that names this holder and update the state from it."""
        if len(self.events) < MAX_EVENTS:
            self.events.append(HolderEvent(event, operation_id, secret_name, secret_version))
        else:
            self.events_not_kept += 1
        if secret_name:
            self.secrets.add(f"{secret_name} v{secret_version}")
        if event.verified is False:
            self.unverified += 1
        if event.reason == actions.RECORDED_LATE:
            self.late_records += 1
        action = event.action
        if action == actions.HOLDER_PROVISIONED:
            # An audit record carries the lifecycle as its outcome, a lifecycle event as its detail.
            self.provisioned.add(event.outcome or event.detail or "unknown")
        elif action in _SERVING:
            self.served = True
        elif action == actions.HOLDER_FAILED:
            self.status = HolderStatus.FAILED
        elif action == actions.HOLDER_TORN_DOWN and self.status is HolderStatus.RUNNING:
            self.status = HolderStatus.TORN_DOWN
        elif action == actions.HOLDER_REPLACED:
            self.replaced = True
        elif action == actions.HOLDER_REPLACE_FAILED:
            self.replace_failures.append(event.detail or "no detail")

    @property
    def first_ms(self) -> int:
        return self.events[0].event.at_ms if self.events else 0

    @property
    def last_ms(self) -> int:
        return self.events[-1].event.at_ms if self.events else 0

    def anomalies(self) -> list[Anomaly]:
        """Return what looks wrong in this holder's trail."""
        found: list[Anomaly] = []

        def flag(kind: str, detail: str) -> None:
            found.append(Anomaly(kind, detail, holder_id=self.holder_id, at_ms=self.last_ms))

        holder = self.holder_id
        if self.served and not self.provisioned:
            flag("no_provision_record", f"holder {holder} served a secret, but no record of it being handed out "
                                        "was read; it may predate --since")
        pooled_with_fragment = "pooled" in self.provisioned and self.secrets
        if self.status is HolderStatus.FAILED and pooled_with_fragment and not self.replaced:
            if self.replace_failures:
                flag("holder_not_replaced", f"pooled holder {holder} failed and the repair could not replace it: "
                                            f"{self.replace_failures[-1]}")
            else:
                flag("holder_not_replaced", f"pooled holder {holder} failed, and no replacement was recorded")
        if self.late_records:
            flag("recorded_late", f"{self.late_records} records of holder {holder} were written late, "
                                  "after their action, because the audit log was unavailable or slow")
        if self.unverified:
            flag("unverified_record", f"{self.unverified} records or events of holder {holder} fail their signature check")
        if self.events_not_kept:
            flag("too_many_events", f"{self.events_not_kept} events beyond the first {MAX_EVENTS} were not kept")
        return found

    def to_json(self) -> dict:
        return {
            "type": "holder", "holder_id": self.holder_id, "status": str(self.status),
            "provisioned": sorted(self.provisioned), "secrets": sorted(self.secrets), "replaced": self.replaced,
            "first_ms": self.first_ms, "last_ms": self.last_ms,
            "events": [event.to_json() for event in self.events], "events_not_kept": self.events_not_kept,
            "anomalies": [anomaly.to_json() for anomaly in self.anomalies()],
        }
