"""The ACL table: each role gets what its code uses, and no role more than it needs."""

from __future__ import annotations

import pytest

from schemas.topics import Topics
from shardbus.certs import acls
from shardbus.certs.acls import Operation, Pattern, Resource

TOPICS = Topics("sb")


def granted(permissions, operation, resource=Resource.TOPIC):
    return {(p.name, p.pattern) for p in permissions if p.operation is operation and p.resource is resource}


def literal(*names):
    return {(name, Pattern.LITERAL) for name in names}


def test_app_reads_only_own_replies():
    permissions = acls.app_permissions(TOPICS, "billing")

    assert {p.principal for p in permissions} == {"sb.app.billing"}
    assert granted(permissions, Operation.READ) == literal("sb.replies.billing")
    assert granted(permissions, Operation.WRITE) == literal("sb.requests")
    assert {p.operation for p in permissions} == {Operation.READ, Operation.WRITE}


def test_holder_reads_only_own_topic():
    permissions = acls.holder_permissions(TOPICS, "holder-1")

    assert {p.principal for p in permissions} == {"sb.holder.holder-1"}
    assert granted(permissions, Operation.READ) == literal("sb.holder.holder-1")
    assert granted(permissions, Operation.WRITE) == literal(
        "sb.fragments", "sb.heartbeats", "sb.acks", "sb.deadletter"
    )
    assert {p.operation for p in permissions} == {Operation.READ, Operation.WRITE}


@pytest.mark.parametrize(
    ("role", "reads"),
    [
        ("authorizer", {"sb.requests", "sb.authorizer.provisioned", "sb.provisioner.replies", "sb.lifecycle",
                        "sb.acks", "sb.audit"}),
        ("reassembler", {"sb.plans", "sb.fragments", "sb.audit"}),
        ("provisioner", {"sb.provisioner", "sb.heartbeats", "sb.lifecycle", "sb.audit"}),
        ("controller", {"sb.lifecycle", "sb.acks", "sb.provisioner.replies", "sb.audit"}),
    ],
)
def test_service_reads_its_inputs_only(role, reads):
    permissions = acls.service_permissions(TOPICS, role)

    assert granted(permissions, Operation.READ) == literal(*reads)
    assert {p.principal for p in permissions} == {f"sb.{role}"}


def test_only_stream_services_have_groups():
    groups = {
        role: granted(acls.service_permissions(TOPICS, role), Operation.READ, Resource.GROUP)
        for role in ("authorizer", "reassembler", "provisioner", "controller")
    }

    assert groups == {
        "authorizer": literal("sb-authorizer"),
        "reassembler": literal("sb-reassembler"),
        "provisioner": set(),
        "controller": set(),
    }


def test_only_provisioner_alters_cluster():
    for role in ("authorizer", "reassembler", "controller"):
        assert not granted(acls.service_permissions(TOPICS, role), Operation.ALTER, Resource.CLUSTER)
    assert granted(acls.service_permissions(TOPICS, "provisioner"), Operation.ALTER, Resource.CLUSTER) == literal(
        acls.CLUSTER_NAME
    )


def test_prefixed_grants_stay_narrow():
    permissions = acls.deployment_permissions(TOPICS, ["billing"])
    prefixes = {p.name for p in permissions if p.pattern is Pattern.PREFIXED}

    # Never the whole deployment prefix: only the per-holder and per-app topic families.
    assert prefixes == {"sb.holder.", "sb.replies."}


def test_lifecycle_written_by_services_only():
    permissions = acls.deployment_permissions(TOPICS, ["billing", "payroll"]) + acls.holder_permissions(TOPICS, "h1")
    writers = {p.principal for p in permissions if p.operation is Operation.WRITE and p.name == "sb.lifecycle"}

    # Its events make the provisioner tear holders down, so no app or holder may forge one.
    assert writers == {"sb.authorizer", "sb.reassembler", "sb.provisioner", "sb.controller"}


def test_acks_written_by_holders_only():
    permissions = acls.deployment_permissions(TOPICS, ["billing"]) + acls.holder_permissions(TOPICS, "h1")
    writers = {p.principal for p in permissions if p.operation is Operation.WRITE and p.name == "sb.acks"}

    assert writers == {"sb.holder.h1"}


def test_holder_topics_written_by_senders_only():
    writers = {
        role
        for role in ("authorizer", "reassembler", "provisioner", "controller")
        if ("sb.holder.", Pattern.PREFIXED) in granted(acls.service_permissions(TOPICS, role), Operation.WRITE)
    }

    # The authorizer sends fetches and per-operation loads; the CLI stores and destroys fragments.
    assert writers == {"authorizer", "controller"}


def test_permission_string_names_everything():
    permission = acls.app_permissions(TOPICS, "billing")[0]

    assert str(permission).startswith("User:sb.app.billing ")


def test_unknown_role_rejected():
    with pytest.raises(ValueError, match="role must be one of"):
        acls.service_permissions(TOPICS, "holder")
