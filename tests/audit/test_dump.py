"""`python -m shardbus.audit.dump`: both kcat framings, verification, and kcat itself where installed."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys

import pytest

from audit_support import altered, build_chain, fixed_key, op_id
from shardbus.audit import AuditLog
from shardbus.audit.dump import run

KEY = fixed_key(3)


def header_framed(records: list[tuple[int, int, bytes | None]]) -> bytes:
    """Frame records as kcat -f '%p %o %S\\n%s' writes them."""
    out = b""
    for partition, offset, value in records:
        length = -1 if value is None else len(value)
        out += f"{partition} {offset} {length}\n".encode() + (value or b"")
    return out


def length_framed(values: list[bytes]) -> bytes:
    """Frame values as kcat -f '%R%s' writes them."""
    return b"".join(len(value).to_bytes(4, "big", signed=True) + value for value in values)


def dump(data: bytes, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = run(list(argv), stdin=io.BytesIO(data), stdout=out)
    return status, out.getvalue()


@pytest.fixture
def public_key(tmp_path):
    path = tmp_path / "audit.pub"
    path.write_bytes(KEY.verify_key.to_pem())
    return str(path)


def test_header_framing_decodes_records(public_key):
    chain = build_chain(KEY, 2, 3, operation_id=op_id(1))
    status, output = dump(header_framed([(2, i, v) for i, v in enumerate(chain)]), "--public-key", public_key)
    assert status == 0
    lines = output.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("2@1 seq 1 2023-11-14 22:13:20.001 authorizer fetch.sent operation_id=")
    assert "detail='record 1'" in lines[1]


def test_length_framing_with_partition(public_key):
    chain = build_chain(KEY, 4, 2)
    status, output = dump(length_framed(chain), "--framing", "length", "--partition", "4",
                          "--format", "jsonl", "--public-key", public_key)
    assert status == 0
    records = [json.loads(line) for line in output.splitlines()]
    assert [(r["partition"], r["offset"], r["sequence"]) for r in records] == [(4, 0, 0), (4, 1, 1)]


def test_tampered_input_exits_one(public_key):
    chain = build_chain(KEY, 0, 3)
    chain[1] = altered(chain[1], detail="changed")
    status, output = dump(header_framed([(0, i, v) for i, v in enumerate(chain)] + [(0, 3, None)]),
                          "--public-key", public_key)
    assert status == 1
    assert "BREAK partition 0 offset 1: bad_signature" in output
    assert "0@3 ERROR the record has no value" in output
    assert "BREAK partition 0 offset 3: undecodable" in output


def test_without_key_only_decodes():
    status, output = dump(header_framed([(0, 0, b"junk")]))
    assert status == 0
    assert "ERROR not a valid AuditRecord" in output


def test_bad_framing_is_an_error(capsys):
    assert dump(b"not a header\n")[0] == 2
    assert "run kcat with -f" in capsys.readouterr().err
    assert dump(b"0 0 --1\n")[0] == 2
    assert "run kcat with -f" in capsys.readouterr().err
    assert dump(header_framed([(0, 0, b"abc")])[:-1])[0] == 2
    assert dump(b"\x00\x00", "--framing", "length")[0] == 2


@pytest.mark.integration
async def test_kcat_pipe_verifies_topic(audit_deployment):
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (Debian: apt-get install kcat)")
    deployment = audit_deployment
    for role in ("authorizer", "reassembler"):
        async with AuditLog(deployment.bootstrap, deployment.topics, deployment.key, role=role) as audit:
            await audit.record_many(dict(action="fetch.sent", operation_id=op_id(n), holder_id="h1") for n in range(4))

    def pipe() -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        kcat_run = subprocess.run(
            [kcat, "-C", "-b", deployment.bootstrap, "-t", deployment.topics.audit, "-o", "beginning", "-e", "-q",
             "-f", "%p %o %S\\n%s"],
            capture_output=True, timeout=60, check=True,
        )
        dump_run = subprocess.run(
            [sys.executable, "-m", "shardbus.audit.dump", "--format", "jsonl",
             "--public-key", str(deployment.home / "audit.pub")],
            input=kcat_run.stdout, capture_output=True, timeout=60,
        )
        return kcat_run, dump_run

    _, dump_run = await asyncio.to_thread(pipe)
    assert dump_run.returncode == 0, dump_run.stderr
    records = [json.loads(line) for line in dump_run.stdout.splitlines()]
    assert sorted((r["partition"], r["sequence"]) for r in records) == [(p, s) for p in (1, 2) for s in range(4)]
    assert b"every chain is intact" in dump_run.stderr
