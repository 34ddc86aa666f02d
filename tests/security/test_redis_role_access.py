"""The TLS stack's Redis: no anonymous access, and each role reaches only its own keys."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from shardbus.certs import redis_users

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def role_urls(tls_stack, tmp_path, topic_prefix):
    redis_users.apply_users(tls_stack.redis_admin_url, topic_prefix, tmp_path)
    yield {role: redis_users.read_role_url(tmp_path, f"{topic_prefix}.{role}") for role in redis_users.REDIS_ROLES}
    admin = redis.Redis.from_url(tls_stack.redis_admin_url)
    try:
        for role in redis_users.REDIS_ROLES:
            admin.execute_command("ACL", "DELUSER", f"{topic_prefix}.{role}")
        keys = list(admin.scan_iter(match=f"{topic_prefix}:*"))
        if keys:
            admin.delete(*keys)
    finally:
        admin.close()


def test_default_user_disabled(tls_stack):
    anonymous = redis.Redis(unix_socket_path=tls_stack.redis_admin_url.split("@", 1)[1].split("?")[0])
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            anonymous.get("anything")
    finally:
        anonymous.close()


def test_reassembler_cannot_read_mapping_table(role_urls, topic_prefix):
    controller = redis.Redis.from_url(role_urls["controller"])
    reassembler = redis.Redis.from_url(role_urls["reassembler"])
    try:
        controller.set(f"{topic_prefix}:secret:tag", b"sealed record")
        reassembler.set(f"{topic_prefix}:op:1", b"state")

        with pytest.raises(NoPermissionError):
            reassembler.get(f"{topic_prefix}:secret:tag")
        with pytest.raises(NoPermissionError):
            reassembler.get(f"{topic_prefix}:backup:tag:1:1")
        assert reassembler.get(f"{topic_prefix}:op:1") == b"state"
    finally:
        controller.close()
        reassembler.close()


def test_authorizer_cannot_write_backups(role_urls, topic_prefix):
    controller = redis.Redis.from_url(role_urls["controller"])
    authorizer = redis.Redis.from_url(role_urls["authorizer"])
    try:
        controller.set(f"{topic_prefix}:backup:tag:1:1", b"sealed fragment")

        assert authorizer.get(f"{topic_prefix}:backup:tag:1:1") == b"sealed fragment"
        with pytest.raises(NoPermissionError):
            authorizer.set(f"{topic_prefix}:backup:tag:1:1", b"forged")
        with pytest.raises(NoPermissionError):
            authorizer.set(f"{topic_prefix}:holder:h1", b"forged")
        authorizer.set(f"{topic_prefix}:seen:op1", b"1")
    finally:
        controller.close()
        authorizer.close()


def test_roles_cannot_run_admin_commands(role_urls):
    for role, url in role_urls.items():
        client = redis.Redis.from_url(url)
        try:
            with pytest.raises(NoPermissionError):
                client.flushall()
            with pytest.raises(NoPermissionError):
                client.config_get("*")
        finally:
            client.close()


def test_other_prefix_keys_denied(role_urls):
    provisioner = redis.Redis.from_url(role_urls["provisioner"])
    try:
        with pytest.raises(NoPermissionError):
            provisioner.get("another-deployment:holder:h1")
    finally:
        provisioner.close()
