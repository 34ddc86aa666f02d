"""Redis users per role: key patterns and the URLs handed to the services."""

from __future__ import annotations

import pytest

from shardbus.certs import redis_users


def test_reassembler_keys_exclude_mapping_table():
    access = redis_users.key_access("sb", "reassembler")

    assert access.rules() == ["~sb:op:*", "~sb:deadlines", "~sb:replied:*", "~sb:lease:*", "~sb:leases"]


def test_authorizer_reads_backups_only():
    rules = redis_users.key_access("sb", "authorizer").rules()

    # Holder repair rewrites a record's placements, but backups stay read-only.
    assert "~sb:secret:*" in rules
    assert "%R~sb:backup:*" in rules
    assert "~sb:backup:*" not in rules
    assert "%R~sb:holder:*" in rules
    assert "~sb:seen:*" in rules
    # A verified release ends the lease that the reassembler recorded.
    assert "~sb:lease:*" in rules
    assert "~sb:leases" in rules


def test_controller_owns_mapping_table():
    assert redis_users.key_access("sb", "controller").rules() == ["~sb:secret:*", "~sb:secrets", "~sb:backup:*"]


def test_provisioner_owns_registry():
    assert redis_users.key_access("sb", "provisioner").rules() == ["~sb:holder:*", "~sb:holders:*"]


def test_unknown_role_rejected():
    with pytest.raises(ValueError, match="role must be one of"):
        redis_users.key_access("sb", "holder")


def test_role_url_replaces_credentials():
    url = redis_users.role_url("unix://admin:secret@/run/redis.sock?db=0", "sb.authorizer", "p@ss/word")

    assert url == "unix://sb.authorizer:p%40ss%2Fword@/run/redis.sock?db=0"
    assert "secret" not in url
