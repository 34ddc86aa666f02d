"""Decode audit records piped from kcat, and optionally verify their chains.

Use it where the shardbus CLI cannot reach Kafka but a standard client can::

    kcat -C -b 127.0.0.1:19092 -t shardbus.audit -o beginning -e -f '%p %o %S\\n%s' \\
        | python -m shardbus.audit.dump --public-key audit.pub

The default ``--framing header`` reads what that ``-f`` format writes: a
line "<partition> <offset> <value length>", then exactly that many value
bytes (a length of -1 means no value). ``--framing length`` reads kcat's
``-f '%R%s'``: a 4-byte big-endian signed length, then the value. That form
carries no partition or offset, so records are numbered from 0 and
``--partition`` names the partition for signature checks.

Output is one line per record, as text or JSON. With ``--public-key`` the
chains are checked as ``shardbus audit verify`` does, breaks are printed,
and the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from schemas import codec
from schemas.audit import AuditRecord
from shardbus.audit.chain import load_verify_key
from shardbus.audit.render import format_time, printable
from shardbus.audit.verify import ChainVerifier
from shardbus.errors import ConfigError, DecodeError

# Maximum length of a header line in header framing, in bytes.
_MAX_HEADER = 64
# Largest value accepted, in bytes: an audit record is at most 64 KiB.
_MAX_VALUE = AuditRecord.max_size
# A decimal integer in a header line. It allows one minus sign only,
# because int() rejects "--1".
_INT = re.compile(rb"-?[0-9]+")


def read_header_framed(stream: BinaryIO) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (partition, offset, value) from "<partition> <offset> <length>\\n<value>" framing."""
    while True:
        line = stream.readline(_MAX_HEADER)
        if not line:
            return
        parts = line.split()
        if len(parts) != 3 or not line.endswith(b"\n") or not all(_is_int(part) for part in parts):
            raise DecodeError(
                "expected a header line '<partition> <offset> <length>'; run kcat with -f '%p %o %S\\n%s'"
            )
        partition, offset, length = (int(part) for part in parts)
        yield partition, offset, _read_value(stream, length)


def read_length_framed(stream: BinaryIO, partition: int) -> Iterator[tuple[int, int, bytes | None]]:
    """Yield (partition, index, value) from kcat's '%R%s' framing: a 4-byte big-endian length, then the value."""
    index = 0
    while True:
        prefix = stream.read(4)
        if not prefix:
            return
        if len(prefix) != 4:
            raise DecodeError(f"record {index}: the input ends inside a 4-byte length prefix")
        yield partition, index, _read_value(stream, int.from_bytes(prefix, "big", signed=True))
        index += 1


def _read_value(stream: BinaryIO, length: int) -> bytes | None:
    if length == -1:
        return None
    if not 0 <= length <= _MAX_VALUE:
        raise DecodeError(f"value length {length} is out of range: expected -1 to {_MAX_VALUE} bytes")
    value = stream.read(length)
    if len(value) != length:
        raise DecodeError(f"the input ends after {len(value)} of {length} value bytes")
    return value


def _is_int(text: bytes) -> bool:
    return _INT.fullmatch(text) is not None


def describe(partition: int, offset: int, value: bytes | None) -> dict:
    """Decode one value into a JSON-ready dict, or a dict with the reason it did not decode."""
    if value is None:
        return {"partition": partition, "offset": offset, "error": "the record has no value"}
    try:
        record = codec.decode(value, AuditRecord)
    except DecodeError as exc:
        return {"partition": partition, "offset": offset, "error": f"not a valid AuditRecord: {exc}"}
    return {
        "partition": partition, "offset": offset, "sequence": record.sequence, "at_ms": record.at_ms,
        "actor": record.actor, "action": record.action, "operation_id": record.operation_id,
        "app_id": record.app_id, "secret_name": record.secret_name, "secret_version": record.secret_version,
        "holder_id": record.holder_id, "outcome": record.outcome, "reason": record.reason,
        "detail": record.detail, "prev_hash": record.prev_hash.hex(), "signature": record.signature.hex(),
    }


def _text_line(fields: dict) -> str:
    where = f"{fields['partition']}@{fields['offset']}"
    if "error" in fields:
        return printable(f"{where} ERROR {fields['error']}")
    names = ("operation_id", "app_id", "secret_name", "holder_id", "outcome", "reason")
    ids = " ".join(f"{name}={fields[name]}" for name in names if fields[name])
    version = f" v{fields['secret_version']}" if fields["secret_version"] else ""
    detail = f" detail={fields['detail']!r}" if fields["detail"] else ""
    return printable(
        f"{where} seq {fields['sequence']} {format_time(fields['at_ms'])} {fields['actor']} "
        f"{fields['action']} {ids}{version}{detail}"
    )


def run(argv: list[str] | None = None, *, stdin: BinaryIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the dump with `argv`; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shardbus.audit.dump",
        description="Decode audit records piped from kcat; with --public-key, verify their chains.",
    )
    parser.add_argument("--framing", choices=("header", "length"), default="header",
                        help="header: kcat -f '%%p %%o %%S\\n%%s' (default); length: kcat -f '%%R%%s'")
    parser.add_argument("--partition", type=int, default=0, metavar="N",
                        help="the partition the records came from, for --framing length (default: 0)")
    parser.add_argument("--public-key", type=Path, metavar="PATH", help="audit.pub, to verify the chains")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text", help="output form (default: text)")
    args = parser.parse_args(argv)
    source = stdin if stdin is not None else sys.stdin.buffer
    out = stdout if stdout is not None else sys.stdout

    try:
        verifier = ChainVerifier(load_verify_key(args.public_key)) if args.public_key else None
        if args.framing == "header":
            records = read_header_framed(source)
        else:
            records = read_length_framed(source, args.partition)
        breaks = 0
        for partition, offset, value in records:
            fields = describe(partition, offset, value)
            out.write((json.dumps(fields, sort_keys=True) if args.format == "jsonl" else _text_line(fields)) + "\n")
            for found in verifier.feed(partition, offset, value) if verifier else ():
                breaks += 1
                if args.format == "jsonl":
                    out.write(json.dumps({"type": "break", **found.to_json()}, sort_keys=True) + "\n")
                else:
                    out.write(printable(f"BREAK partition {partition} offset {offset}: {found.kind}: {found.detail}") + "\n")
    except (DecodeError, ConfigError) as exc:
        print(f"shardbus.audit.dump: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away, as `| head` does; there is no one left to tell.
        return 1
    if verifier is not None:
        count = sum(state.records for state in verifier.partitions.values())
        verdict = f"{breaks} breaks" if breaks else "every chain is intact"
        print(f"verified {count} records on {len(verifier.partitions)} partitions: {verdict}", file=sys.stderr)
    return 1 if breaks else 0


if __name__ == "__main__":
    sys.exit(run())
