"""Pure parts of `shardbus audit`: TIME arguments, the progress line and table cells."""

from __future__ import annotations

import io

import pytest

from audit_support import T0
from shardbus.audit.render import Progress, format_time, printable
from shardbus.cli.audit_commands import parse_time


def test_parse_time_forms():
    now = lambda: T0 / 1000  # noqa: E731
    assert parse_time(str(T0)) == T0
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14 22:13:20") == T0
    assert parse_time("2023-11-14T23:13:20+01:00") == T0
    assert parse_time("30m", now=now) == T0 - 30 * 60_000
    assert parse_time("2d", now=now) == T0 - 2 * 86_400_000


def test_parse_time_rejects_other_text():
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_time("yesterday")


def test_format_time_is_utc_with_milliseconds():
    assert format_time(T0 + 7) == "2023-11-14 22:13:20.007"


def test_printable_replaces_control_characters():
    assert printable("ok\x1b[31mred\nline") == "ok?[31mred?line"


class FakeReader:
    records_read = 50
    records_total = 200


def test_progress_line_shows_share():
    out = io.StringIO()
    progress = Progress(out, label="replayed")
    progress(FakeReader())
    progress.done()
    assert out.getvalue() == "\rreplayed 50 of 200 records (25%)\n"
