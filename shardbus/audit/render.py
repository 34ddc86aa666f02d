"""Output of ``shardbus audit replay``: a readable table, or JSON lines.

Both print only ids, codes, times and detail text. The table replaces
control characters with "?", because records come from Kafka and a forged
one could otherwise send terminal escape sequences.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from shardbus.audit.holder_timeline import HolderEvent, HolderTimeline
from shardbus.audit.replay import Loose, Stats
from shardbus.audit.stream import TopicReader
from shardbus.audit.timeline import Anomaly, Event, Timeline

# Widest value shown in a table column; longer ones are cut with "~".
_MAX_COLUMN = 40
_COLUMNS = ("time (UTC)", "source", "action", "holder", "outcome", "reason", "detail")
_HOLDER_COLUMNS = ("time (UTC)", "source", "action", "operation", "outcome", "reason", "detail")


def format_time(at_ms: int) -> str:
    """Return `at_ms` as "YYYY-MM-DD HH:MM:SS.mmm" in UTC."""
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{at_ms % 1000:03d}"


def printable(text: str) -> str:
    """Return `text` with control and other non-printable characters replaced by "?"."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class TableSink:
    """Writes one block per operation and one line per loose event or anomaly."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def timeline(self, timeline: Timeline) -> None:
        version = f" v{timeline.secret_version}" if timeline.secret_version else ""
        header = (
            f"operation {timeline.operation_id}  app {timeline.app_id or '-'}  "
            f"secret {timeline.secret_name or '-'}{version}  [{timeline.status}]"
        )
        self._line(header)
        self._rows(_COLUMNS, [_event_row(event) for event in timeline.events])
        if timeline.events_not_kept:
            self._line(f"  ... {timeline.events_not_kept} more events not kept")
        for anomaly in timeline.anomalies():
            self._line(f"  ! {anomaly.kind}: {anomaly.detail}")
        self._line("")

    def loose(self, item: Loose) -> None:
        event = item.event
        label = "late event" if item.late else "event"
        ids = " ".join(
            f"{name} {value}" for name, value in (
                ("operation", item.operation_id), ("app", item.app_id), ("secret", item.secret_name),
                ("holder", event.holder_id), ("outcome", event.outcome), ("reason", event.reason),
            ) if value
        )
        detail = f": {event.detail}" if event.detail else ""
        self._line(f"{label} {format_time(event.at_ms)} {event.source} {event.action} {ids}{detail}{_mark(event)}")

    def anomaly(self, anomaly: Anomaly) -> None:
        when = f"{format_time(anomaly.at_ms)} " if anomaly.at_ms else ""
        self._line(f"! anomaly {when}{anomaly.kind}: {anomaly.detail}")

    def holder(self, timeline: HolderTimeline) -> None:
        secrets = ", ".join(sorted(timeline.secrets)) or "-"
        provisioned = ", ".join(sorted(timeline.provisioned)) or "-"
        self._line(f"holder {timeline.holder_id}  provisioned {provisioned}  secrets {secrets}  [{timeline.status}]")
        self._rows(_HOLDER_COLUMNS, [_holder_row(item) for item in timeline.events])
        if timeline.events_not_kept:
            self._line(f"  ... {timeline.events_not_kept} more events not kept")
        for anomaly in timeline.anomalies():
            self._line(f"  ! {anomaly.kind}: {anomaly.detail}")
        self._line("")

    def summary(self, stats: Stats) -> None:
        operations = ", ".join(f"{count} {status}" for status, count in sorted(stats.operations.items())) or "none"
        self._line(
            f"replayed {stats.audit_records} audit records and {stats.lifecycle_events} lifecycle events: "
            f"operations {operations}; {stats.anomalies} anomalies; {stats.loose_events} other events"
        )
        if stats.operations_filtered_out:
            self._line(f"{stats.operations_filtered_out} operations did not match the filters")
        if stats.undecodable or stats.unverified:
            self._line(
                f"! {stats.undecodable} undecodable audit records and {stats.unverified} that fail their "
                "signature check were found; run 'shardbus audit verify' for their offsets"
            )
        if stats.unverified_events:
            self._line(
                f"! {stats.unverified_events} lifecycle events fail their signature check; "
                "the timelines mark them (UNVERIFIED), and --format jsonl gives their offsets"
            )

    def _rows(self, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        widths = [min(_MAX_COLUMN, max(len(row[i]) for row in [columns, *rows])) for i in range(len(columns) - 1)]
        self._line("  " + _join(columns, widths).upper())
        for row in rows:
            self._line("  " + _join(row, widths))

    def _line(self, text: str) -> None:
        self.out.write(printable(text) + "\n")


class JsonSink:
    """Writes one JSON object per line: operations, events, anomalies and the summary."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    def timeline(self, timeline: Timeline) -> None:
        self._write(timeline.to_json())

    def loose(self, item: Loose) -> None:
        self._write(item.to_json())

    def anomaly(self, anomaly: Anomaly) -> None:
        self._write(anomaly.to_json())

    def holder(self, timeline: HolderTimeline) -> None:
        self._write(timeline.to_json())

    def summary(self, stats: Stats) -> None:
        self._write(stats.to_json())

    def _write(self, document: dict) -> None:
        self.out.write(json.dumps(document, sort_keys=True) + "\n")


class Progress:
    """Rewrites one status line on stderr at most every `interval_s` seconds."""

    def __init__(self, out: TextIO = sys.stderr, *, interval_s: float = 0.5, label: str = "read") -> None:
        self.out = out
        self.interval_s = interval_s
        self.label = label
        self._next = 0.0
        self._shown = False

    def __call__(self, reader: TopicReader) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        total = reader.records_total
        share = f" ({100 * reader.records_read // total}%)" if total else ""
        self.out.write(f"\r{self.label} {reader.records_read} of {total} records{share}")
        self.out.flush()
        self._shown = True

    def done(self) -> None:
        """End the status line so later output starts on a fresh line."""
        if self._shown:
            self.out.write("\n")
            self.out.flush()


def _event_row(event: Event) -> tuple[str, ...]:
    source = event.source + _mark(event)
    return (
        format_time(event.at_ms), source, event.action, event.holder_id, event.outcome, event.reason,
        event.detail,
    )


def _holder_row(item: HolderEvent) -> tuple[str, ...]:
    event = item.event
    return (
        format_time(event.at_ms), event.source + _mark(event), event.action, item.operation_id, event.outcome,
        event.reason, event.detail,
    )


def _mark(event: Event) -> str:
    return " (UNVERIFIED)" if event.verified is False else ""


def _join(row: tuple[str, ...], widths: list[int]) -> str:
    cells = [_fit(value, width).ljust(width) for value, width in zip(row, widths)]
    return "  ".join([*cells, row[-1]]).rstrip()


def _fit(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "~"
