"""The `shardbus` command against a running deployment: put, list, run, rotate, delete."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys

import pytest

from shardbus.demo_watch import LifecycleWatcher
from shardbus.errors import Denied

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(deployment, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    settings = deployment.settings
    env = dict(
        os.environ,
        SHARDBUS_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        SHARDBUS_REDIS_URL=settings.redis_url,
        SHARDBUS_TOPIC_PREFIX=settings.topic_prefix,
        SHARDBUS_HOME=str(settings.home),
    )
    return subprocess.run(
        [sys.executable, "-m", "shardbus", *args],
        input=stdin, env=env, capture_output=True, timeout=120, check=False,
    )


def test_cli_put_list_run_rotate_delete(shardbus_deployment):
    first = secrets.token_hex(16).encode()
    second = secrets.token_hex(16).encode()

    put = _cli(shardbus_deployment, "secret", "put", "db/cli", "--fragments", "4", "--threshold", "2", stdin=first)
    assert put.returncode == 0, put.stderr.decode()
    assert b"stored db/cli version 1: 2-of-4" in put.stdout

    listing = _cli(shardbus_deployment, "secret", "list")
    assert listing.returncode == 0, listing.stderr.decode()
    assert b"db/cli" in listing.stdout
    assert first not in listing.stdout

    script = "import hashlib, os; print(hashlib.sha256(os.environ['CLI_SECRET'].encode()).hexdigest())"
    run = _cli(shardbus_deployment, "run", "--app", "billing", "--secret", "CLI_SECRET=db/cli",
               "--", sys.executable, "-c", script)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == hashlib.sha256(first).hexdigest()

    rotate = _cli(shardbus_deployment, "secret", "rotate", "db/cli", stdin=second)
    assert rotate.returncode == 0, rotate.stderr.decode()
    assert b"version 2" in rotate.stdout
    run = _cli(shardbus_deployment, "run", "--app", "billing", "--secret", "CLI_SECRET=db/cli",
               "--", sys.executable, "-c", script)
    assert run.stdout.decode().strip() == hashlib.sha256(second).hexdigest()

    delete = _cli(shardbus_deployment, "secret", "delete", "db/cli")
    assert delete.returncode == 0, delete.stderr.decode()
    run = _cli(shardbus_deployment, "run", "--app", "billing", "--secret", "CLI_SECRET=db/cli", "--", "true")
    assert run.returncode == 4
    assert b"shardbus: denied: secret_not_found" in run.stderr


def test_cli_run_exit_status_passed_through(shardbus_deployment):
    _cli(shardbus_deployment, "secret", "put", "db/status", stdin=b"pw")
    run = _cli(shardbus_deployment, "run", "--app", "billing", "--secret", "PW=db/status",
               "--", sys.executable, "-c", "raise SystemExit(7)")
    assert run.returncode == 7, run.stderr.decode()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("secret", "put", "db/empty"), b"", b"the secret is empty"),
        (("secret", "put", "db/bad-policy", "--fragments", "2", "--threshold", "3"), b"x", b"invalid --fragments/--threshold"),
        (("secret", "put", "db/missing-file", "--file", "/nonexistent/secret"), b"", b"cannot read /nonexistent/secret"),
        (("secret", "rotate", "db/never-stored"), b"x", b"not found"),
        (("secret", "put", "../evil", "--lifecycle", "per_operation"), b"x", b"invalid secret name '../evil'"),
        (("secret", "put", "bad name"), b"x", b"invalid secret name 'bad name'"),
        (("secret", "put", "a" * 201), b"x", b"invalid secret name"),
        (("secret", "delete", "db/never-stored"), b"", b"not found"),
        (("run", "--app", "billing", "--secret", "bad-binding", "--", "true"), b"", b"expected ENV=NAME"),
        (("run", "--app", "billing", "--secret", "X=db/a"), b"", b"no command given"),
        (("run", "--app", "nobody", "--secret", "X=db/a", "--", "true"), b"", b"shardbus app add nobody"),
    ],
)
def test_cli_bad_input_clear_errors(shardbus_deployment, args, stdin, message):
    result = _cli(shardbus_deployment, *args, stdin=stdin)
    assert result.returncode == 2, result.stderr.decode()
    assert message in result.stderr
    assert b"Traceback" not in result.stderr


def test_cli_put_existing_name_rejected(shardbus_deployment):
    assert _cli(shardbus_deployment, "secret", "put", "db/twice", stdin=b"a").returncode == 0
    again = _cli(shardbus_deployment, "secret", "put", "db/twice", stdin=b"b")
    assert again.returncode == 2
    assert b"already exists" in again.stderr
    assert b"rotate" in again.stderr


async def test_deleted_secret_not_found(shardbus_deployment):
    stored = await shardbus_deployment.put("db/deleted", b"gone")
    settings, topics = shardbus_deployment.settings, shardbus_deployment.topics
    async with LifecycleWatcher(settings.kafka_bootstrap, topics) as events:
        assert _cli(shardbus_deployment, "secret", "delete", "db/deleted").returncode == 0
        torn_down = await events.wait_for("holder_torn_down", count=len(stored.holders), timeout_s=30)
    assert {e.holder_id for e in torn_down} == set(stored.holders)
    async with shardbus_deployment.client() as client:
        with pytest.raises(Denied) as denied:
            await client.request("db/deleted")
    assert denied.value.reason == "secret_not_found"


def test_cli_rejected_put_leaves_no_backup(shardbus_deployment):
    import redis as redis_sync

    prefix = shardbus_deployment.settings.topic_prefix
    client = redis_sync.Redis.from_url(shardbus_deployment.settings.redis_url)
    try:
        before = len(list(client.scan_iter(match=f"{prefix}:backup:*")))
        result = _cli(shardbus_deployment, "secret", "put", "../evil", stdin=b"x")
        assert result.returncode == 2
        assert len(list(client.scan_iter(match=f"{prefix}:backup:*"))) == before
    finally:
        client.close()


def test_cli_unreadable_record_listed_and_deleted(shardbus_deployment):
    import redis as redis_sync

    from shardbus.crypto.keys import MasterKey
    from shardbus.store.mapping import MappingTable

    settings = shardbus_deployment.settings
    assert _cli(shardbus_deployment, "secret", "put", "db/tampered", stdin=b"t").returncode == 0
    tag = MappingTable(None, MasterKey.load(settings.master_key_path), prefix=settings.topic_prefix).tag("db/tampered")
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        client.set(f"{settings.topic_prefix}:secret:{tag}", b"garbage")
    finally:
        client.close()

    listing = _cli(shardbus_deployment, "secret", "list")
    assert listing.returncode == 1, listing.stderr.decode()
    assert tag.encode() in listing.stderr
    assert b"SHARDBUS_TOPIC_PREFIX" in listing.stderr
    delete = _cli(shardbus_deployment, "secret", "delete", "db/tampered")
    assert delete.returncode == 0, delete.stderr.decode()
    assert tag.encode() not in _cli(shardbus_deployment, "secret", "list").stderr
