"""Which Kafka resources each principal of a deployment may use.

The broker runs Kafka's StandardAuthorizer with
``allow.everyone.if.no.acl.found=false``, so a principal may do only what an
ACL here allows. Each role gets what its code uses and nothing more:

- an application writes requests (its signed releases included) and reads
  only its own reply topic;
- a holder reads only its own command topic and writes fragments,
  heartbeats, acknowledgements and dead letters;
- the services read and write the topics their consumers and producers
  name, create the topics they ensure at start-up, and use their faust
  consumer group (the authorizer and the reassembler).

Only the services (authorizer, reassembler, provisioner, controller) may
write ``{p}.lifecycle``, because its events make the provisioner tear
holders down and hand them back to the pool.

Kafka grants DESCRIBE with READ, WRITE, DELETE or ALTER, so a topic that a
service only creates and then waits for also gets DESCRIBE.

NOTE: Kafka has no permission narrower than ALTER on the cluster for
creating ACLs, so the provisioner, which grants and revokes holder ACLs,
could grant itself more. It also keeps the CA key to issue holder
certificates. Treat it as part of the trusted computing base, like the
authorizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from schemas.topics import Topics
from shardbus.certs import principals


class Resource(str, Enum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class Pattern(str, Enum):
    #: The resource name must equal the ACL's name.
    LITERAL = "literal"
    #: The resource name must start with the ACL's name.
    PREFIXED = "prefixed"


class Operation(str, Enum):
    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    DESCRIBE = "describe"
    ALTER = "alter"
    DESCRIBE_CONFIGS = "describe_configs"


#: Kafka's name for the one cluster resource.
CLUSTER_NAME = "kafka-cluster"


@dataclass(frozen=True, order=True)
class Permission:
    """One ALLOW ACL: `principal` may do `operation` on a resource."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def __str__(self) -> str:
        where = f"{self.name}*" if self.pattern is Pattern.PREFIXED else self.name
        return f"User:{self.principal} {self.operation.value} {self.resource.value} {where}"


def faust_group(topics: Topics, service: str) -> str:
    """Return the consumer group (the faust app id) of a stream service."""
    return f"{topics.prefix}-{service}"


class _Grants:
    def __init__(self, principal: str) -> None:
        self.principal = principal
        self.items: set[Permission] = set()

    def topics(self, operation: Operation, *names: str) -> None:
        for name in names:
            self.items.add(Permission(self.principal, Resource.TOPIC, name, Pattern.LITERAL, operation))

    def topic_prefix(self, operation: Operation, prefix: str) -> None:
        self.items.add(Permission(self.principal, Resource.TOPIC, prefix, Pattern.PREFIXED, operation))

    def group(self, name: str) -> None:
        self.items.add(Permission(self.principal, Resource.GROUP, name, Pattern.LITERAL, Operation.READ))

    def cluster(self, operation: Operation) -> None:
        self.items.add(Permission(self.principal, Resource.CLUSTER, CLUSTER_NAME, Pattern.LITERAL, operation))

    def audit(self, topics: Topics) -> None:
        # Each service appends to its partition of the audit chain, reads the
        # partition's tail back to continue the chain after a restart, adds
        # the partition if the topic lacks it and checks the topic's retention.
        for operation in (Operation.READ, Operation.WRITE, Operation.CREATE, Operation.ALTER,
                          Operation.DESCRIBE_CONFIGS):
            self.topics(operation, topics.audit)

    def result(self) -> tuple[Permission, ...]:
        return tuple(sorted(self.items))


def app_permissions(topics: Topics, app_id: str) -> tuple[Permission, ...]:
    grants = _Grants(principals.app_principal(topics.prefix, app_id))
    grants.topics(Operation.WRITE, topics.requests)
    grants.topics(Operation.READ, topics.replies(app_id))
    return grants.result()


def holder_permissions(topics: Topics, holder_id: str) -> tuple[Permission, ...]:
    grants = _Grants(principals.holder_principal(topics.prefix, holder_id))
    grants.topics(Operation.READ, topics.holder(holder_id))
    grants.topics(Operation.WRITE, topics.fragments, topics.heartbeats, topics.acks, topics.deadletter)
    return grants.result()


def service_permissions(topics: Topics, role: str) -> tuple[Permission, ...]:
    """Return the ACLs of one service role (see ``principals.SERVICE_ROLES``)."""
    grants = _Grants(principals.service_principal(topics.prefix, role))
    holder_topics = topics.holder_prefix
    reply_topics = topics.replies_prefix
    if role == "authorizer":
        grants.topics(Operation.READ, topics.requests, topics.provisioned)
        grants.group(faust_group(topics, "authorizer"))
        grants.topics(Operation.WRITE, topics.plans, topics.provisioner, topics.lifecycle, topics.deadletter)
        grants.topic_prefix(Operation.WRITE, holder_topics)
        grants.topic_prefix(Operation.WRITE, reply_topics)
        grants.topics(Operation.CREATE, topics.requests, topics.provisioner, topics.lifecycle, topics.deadletter,
                      topics.provisioned, topics.plans, topics.fragments)
        # Holder repair reads the lifecycle topic, asks the provisioner for a
        # replacement holder, loads it and waits for its acknowledgement.
        grants.topics(Operation.READ, topics.provisioner_replies, topics.lifecycle, topics.acks)
        grants.topics(Operation.CREATE, topics.provisioner_replies, topics.acks)
        grants.topics(Operation.DESCRIBE, topics.fragments)
        grants.topic_prefix(Operation.CREATE, reply_topics)
        grants.audit(topics)
    elif role == "reassembler":
        grants.topics(Operation.READ, topics.plans, topics.fragments)
        grants.group(faust_group(topics, "reassembler"))
        grants.topics(Operation.WRITE, topics.lifecycle, topics.deadletter)
        grants.topic_prefix(Operation.WRITE, reply_topics)
        grants.topics(Operation.CREATE, topics.plans, topics.fragments, topics.lifecycle, topics.deadletter)
        grants.audit(topics)
    elif role == "provisioner":
        grants.topics(Operation.READ, topics.provisioner, topics.heartbeats, topics.lifecycle)
        grants.topics(Operation.WRITE, topics.lifecycle, topics.deadletter, topics.provisioned,
                      topics.provisioner_replies)
        grants.topics(Operation.CREATE, topics.provisioner, topics.heartbeats, topics.lifecycle, topics.acks,
                      topics.deadletter)
        # The acknowledgement topic is created for the holders, which may not create it.
        grants.topics(Operation.DESCRIBE, topics.acks)
        for operation in (Operation.CREATE, Operation.DELETE):
            grants.topic_prefix(operation, holder_topics)
        # Granting and revoking each holder's ACLs.
        grants.cluster(Operation.ALTER)
        grants.cluster(Operation.DESCRIBE)
        grants.audit(topics)
    elif role == "controller":
        grants.topics(Operation.WRITE, topics.lifecycle, topics.provisioner)
        grants.topic_prefix(Operation.WRITE, holder_topics)
        grants.topics(Operation.READ, topics.lifecycle, topics.acks, topics.provisioner_replies)
        grants.topics(Operation.CREATE, topics.provisioner, topics.provisioner_replies)
        grants.topic_prefix(Operation.CREATE, reply_topics)
        grants.topic_prefix(Operation.DESCRIBE, reply_topics)
        grants.audit(topics)
    else:
        raise ValueError(f"role must be one of {', '.join(principals.SERVICE_ROLES)}, got {role!r}")
    return grants.result()


def deployment_permissions(topics: Topics, app_ids: list[str] | tuple[str, ...]) -> tuple[Permission, ...]:
    """Return the ACLs of every service and of each app in `app_ids`; holders get theirs when provisioned."""
    result: list[Permission] = []
    for role in principals.SERVICE_ROLES:
        result += service_permissions(topics, role)
    for app_id in app_ids:
        result += app_permissions(topics, app_id)
    return tuple(result)
