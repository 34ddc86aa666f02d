"""`shardbus audit replay | verify`: read the audit trail back from Kafka.

Both read the topics to the end offsets they find at start, with no consumer
group, so they change nothing on the broker and can run while services write.
Neither needs a secret key: verify and replay use ``audit.pub`` only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from schemas.topics import Topics
from shardbus.audit.chain import load_verify_key
from shardbus.audit.render import JsonSink, Progress, TableSink
from shardbus.audit.replay import MAX_OPEN, Replayer, ReplayFilter, replay_topics
from shardbus.audit.verify import ChainBreak, verify_topic
from shardbus.config import Settings
from shardbus.crypto.signing import VerifyKey
from shardbus.kafka import client_options

_RELATIVE = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="verify and replay the audit trail on Kafka")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    replay = actions.add_parser("replay", help="rebuild each operation's timeline, with anomalies flagged")
    replay.add_argument("--secret", metavar="PATTERN", help="only secrets matching this shell pattern, e.g. 'db/*'")
    replay.add_argument("--app", metavar="APP_ID", help="only this application's operations")
    replay.add_argument("--holder", metavar="HOLDER_ID",
                        help="only operations this holder took part in, followed by the holder's own timeline")
    replay.add_argument("--operation", metavar="OPERATION_ID", help="only this operation")
    replay.add_argument("--since", metavar="TIME", help="start reading at TIME (see TIME below)")
    replay.add_argument("--until", metavar="TIME", help="only operations that started before TIME")
    replay.add_argument("--format", choices=("table", "jsonl"), default="table",
                        help="table (default) or one JSON object per line")
    replay.add_argument("--no-lifecycle", action="store_true", help="read the audit topic only")
    replay.add_argument("--max-open", type=int, default=MAX_OPEN, metavar="N",
                        help=f"operations kept open at once before the oldest is printed as incomplete "
                             f"(default: {MAX_OPEN})")
    replay.add_argument("--burst", type=int, default=5, metavar="N",
                        help="flag an app denied N times within --burst-window (default: 5)")
    replay.add_argument("--burst-window", type=float, default=60.0, metavar="SECONDS",
                        help="window of --burst in seconds (default: 60)")
    _add_common(replay)
    replay.set_defaults(handler=_replay)

    verify = actions.add_parser("verify", help="check every partition's hash chain and signatures")
    verify.add_argument("--from", dest="since", metavar="TIME",
                        help="start at TIME; each chain is then trusted from its first record read")
    verify.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text (default) or one JSON object per break and per partition")
    _add_common(verify)
    verify.set_defaults(handler=_verify)

    for parser in (replay, verify):
        parser.epilog = (
            "TIME is an ISO 8601 date or time (UTC unless it names a zone), such as 2026-03-01 or "
            "2026-03-01T12:00:00Z; a duration ago, such as 30m, 12h or 7d; or milliseconds since the epoch."
        )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--public-key", type=Path, metavar="PATH",
                        help="the audit public key (default: audit.pub in $SHARDBUS_HOME)")
    parser.add_argument("--progress", action="store_true",
                        help="show a progress line on stderr even when it is not a terminal")


def parse_time(text: str, *, now: Callable[[], float] = time.time) -> int:
    """Parse a TIME argument into milliseconds since the epoch; raise ValueError naming the forms accepted."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    relative = _RELATIVE.fullmatch(text)
    if relative:
        seconds = int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return int((now() - seconds) * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected an ISO 8601 time such as 2026-03-01T12:00:00Z, "
            "a duration ago such as 30m, 12h or 7d, or milliseconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _verify_key(args: argparse.Namespace, settings: Settings, *, required: bool) -> VerifyKey | None:
    path = args.public_key or settings.home / "audit.pub"
    if not required and args.public_key is None and not path.exists():
        return None
    return load_verify_key(path)


def _progress(args: argparse.Namespace, label: str) -> Progress | None:
    if args.progress or sys.stderr.isatty():
        return Progress(sys.stderr, label=label)
    return None


async def _replay(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    topics = Topics(settings.topic_prefix)
    since_ms = parse_time(args.since) if args.since else None
    filters = ReplayFilter(
        operation_id=args.operation, app_id=args.app, secret=args.secret, holder_id=args.holder,
        since_ms=since_ms, until_ms=parse_time(args.until) if args.until else None,
    )
    verify_key = _verify_key(args, settings, required=False)
    if verify_key is None:
        print(f"shardbus: note: {settings.home / 'audit.pub'} not found, so signatures are not checked; "
              "give --public-key to check them", file=sys.stderr)
    sink = JsonSink(sys.stdout) if args.format == "jsonl" else TableSink(sys.stdout)
    replayer = Replayer(
        sink, audit_topic=topics.audit, lifecycle_topic=None if args.no_lifecycle else topics.lifecycle,
        verify_key=verify_key, filters=filters, max_open=args.max_open,
        burst_count=args.burst, burst_window_ms=int(args.burst_window * 1000),
    )
    progress = _progress(args, "replayed")
    try:
        missing = await replay_topics(
            settings.kafka_bootstrap, replayer, since_ms=since_ms, on_progress=progress,
            kafka_options=client_options(settings),
        )
    finally:
        if progress is not None:
            progress.done()
    for topic in missing:
        print(f"shardbus: note: topic {topic} does not exist, so nothing was read from it", file=sys.stderr)
    return 0


async def _verify(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    topic = Topics(settings.topic_prefix).audit
    verify_key = _verify_key(args, settings, required=True)
    since_ms = parse_time(args.since) if args.since else None
    as_json = args.format == "jsonl"

    def show(found: ChainBreak) -> None:
        if as_json:
            print(json.dumps({"type": "break", **found.to_json()}, sort_keys=True), flush=True)
        else:
            print(f"BREAK partition {found.partition} offset {found.offset}: {found.kind}: {found.detail}", flush=True)

    progress = _progress(args, "verified")
    try:
        report = await verify_topic(
            settings.kafka_bootstrap, topic, verify_key, since_ms=since_ms, on_break=show, on_progress=progress,
            kafka_options=client_options(settings),
        )
    finally:
        if progress is not None:
            progress.done()
    for state in report.partitions:
        if as_json:
            print(json.dumps({
                "type": "partition", "partition": state.partition, "records": state.records, "valid": state.valid,
                "first_offset": state.first_offset, "first_sequence": state.first_sequence,
                "head_sequence": state.head_sequence, "head_offset": state.head_offset,
                "actors": sorted(state.actors), "breaks": state.breaks,
            }, sort_keys=True))
        else:
            actors = ", ".join(sorted(state.actors)) or "-"
            verdict = f"{state.breaks} breaks" if state.breaks else "intact"
            print(
                f"partition {state.partition}: {state.records} records, {state.valid} valid, sequences "
                f"{state.first_sequence}..{state.head_sequence}, actors {actors}: {verdict}"
            )
    if not as_json:
        where = f" from {args.since}" if args.since else ""
        if report.break_count:
            print(f"{topic}{where}: {report.break_count} breaks in {report.records} records")
        else:
            print(
                f"{topic}{where}: all {report.records} records verify and every chain is intact; "
                "compare each head sequence with its writer's log, because removing the newest records "
                "leaves no break"
            )
    return 1 if report.break_count else 0
