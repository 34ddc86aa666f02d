"""Kafka topic names and record keys of shardbus.

Every topic name comes from ``Topics(prefix)``, so a test or a second
deployment can run side by side with its own prefix::

    {p}.requests             OperationRequest,           key: operation id
                             ReleaseRequest
    {p}.plans                OperationPlan               key: operation id
    {p}.fragments            FragmentResponse            key: operation id
    {p}.replies.{app_id}     LeaseReply, ErrorReply      key: operation id
    {p}.holder.{holder_id}   FetchCommand                key: operation id
                             StoreFragment, DestroyFragment  key: holder id
    {p}.lifecycle            LifecycleEvent              key: operation or holder id
    {p}.acks                 HolderAck                   key: holder id
    {p}.heartbeats           HolderHeartbeat             key: holder id
    {p}.provisioner          ProvisionRequest            key: request id
    {p}.provisioner.replies  ProvisionReply              key: request id
    {p}.authorizer.provisioned  ProvisionReply           key: request id
    {p}.audit                AuditRecord                 key: operation id when set
    {p}.deadletter           DeadLetter                  key: source topic and partition

Partition counts that must agree:

- ``plans`` and ``fragments`` must have the same number of partitions. Both
  are keyed by operation id and use Kafka's default partitioner (murmur2 of
  the key), so the plan and the fragments of one operation land in the same
  partition number and reach the same reassembler instance.
- ``holder.{holder_id}`` has one partition, because one holder consumes it and
  a StoreFragment must be applied before a FetchCommand that follows it.
- The other topics may have any number of partitions.

``partition_key(message)`` is the one place that picks a record's key.

NOTE: Kafka treats "." and "_" as the same character when it compares topic
names for collisions, so holders "a.b" and "a_b" cannot both have a topic.
The same holds for app ids. The provisioner, which generates holder ids,
should use only one of the two characters.

Topics that carry sealed fragments or leases (``fragments``, ``holder.*``,
``replies.*``) need ``max.message.bytes`` of at least
``schemas.base.MAX_MESSAGE_SIZE``, above Kafka's 1 MiB default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.audit import AuditRecord, DeadLetter
from schemas.base import Message
from schemas.fields import NAME_PATTERN
from schemas.holders import (
    DestroyFragment,
    HolderAck,
    HolderHeartbeat,
    LifecycleEvent,
    ProvisionReply,
    ProvisionRequest,
    StoreFragment,
)
from schemas.operations import (
    ErrorReply,
    FetchCommand,
    FragmentResponse,
    LeaseReply,
    OperationPlan,
    OperationRequest,
    ReleaseRequest,
)

#: Kafka's limit on the length of a topic name.
MAX_TOPIC_LENGTH = 249
#: Maximum prefix length, which leaves room for ".replies." or ".holder." and a 64-character id.
MAX_PREFIX_LENGTH = 64

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

# The fields whose value keys a record, tried in order until one is set.
# Kafka keeps order only within a partition, and the module docstring says
# which topics rely on these keys for that.
_KEY_FIELDS: dict[type[Message], tuple[str, ...]] = {
    OperationRequest: ("operation_id",),
    ReleaseRequest: ("operation_id",),
    OperationPlan: ("operation_id",),
    FetchCommand: ("operation_id",),
    FragmentResponse: ("operation_id",),
    LeaseReply: ("operation_id",),
    ErrorReply: ("operation_id",),
    StoreFragment: ("holder_id",),
    DestroyFragment: ("holder_id",),
    HolderAck: ("holder_id",),
    HolderHeartbeat: ("holder_id",),
    LifecycleEvent: ("operation_id", "holder_id", "secret_name", "event"),
    ProvisionRequest: ("request_id",),
    ProvisionReply: ("request_id",),
    AuditRecord: ("operation_id", "holder_id", "secret_name", "actor"),
}


@dataclass(frozen=True)
class Topics:
    """The topic names of one shardbus deployment, all starting with ``prefix``."""

    prefix: str = "shardbus"

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise TypeError(f"topic prefix must be a str, got {type(self.prefix).__name__}")
        if not _PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(
                f"topic prefix must be 1 to {MAX_PREFIX_LENGTH} of A-Z a-z 0-9 . _ -, "
                f"got {self.prefix[:MAX_PREFIX_LENGTH + 1]!r}; choose a short plain name such as 'shardbus'"
            )
        if self.prefix.startswith("__"):
            raise ValueError(
                f"topic prefix {self.prefix!r} starts with '__', like Kafka's internal topics "
                "(__consumer_offsets); choose a prefix that starts with a letter"
            )

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def plans(self) -> str:
        return f"{self.prefix}.plans"

    @property
    def fragments(self) -> str:
        return f"{self.prefix}.fragments"

    @property
    def lifecycle(self) -> str:
        return f"{self.prefix}.lifecycle"

    @property
    def acks(self) -> str:
        """The topic of holders' HolderAck replies to StoreFragment and DestroyFragment.

        It is apart from ``lifecycle`` so that holders need no write access
        to the lifecycle topic, whose events make the provisioner act.
        """
        return f"{self.prefix}.acks"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def provisioner(self) -> str:
        return f"{self.prefix}.provisioner"

    @property
    def provisioner_replies(self) -> str:
        """The topic of the provisioner's replies to clients such as ``secret put``."""
        return f"{self.prefix}.provisioner.replies"

    @property
    def provisioned(self) -> str:
        """The topic of the provisioner's replies to the authorizer.

        It is separate from ``provisioner_replies`` so that the authorizer reads
        only the replies to its own requests.
        """
        return f"{self.prefix}.authorizer.provisioned"

    @property
    def holder_prefix(self) -> str:
        """The prefix shared by every holder's command topic, for prefixed ACLs."""
        return f"{self.prefix}.holder."

    @property
    def replies_prefix(self) -> str:
        """The prefix shared by every application's reply topic, for prefixed ACLs."""
        return f"{self.prefix}.replies."

    @property
    def audit(self) -> str:
        return f"{self.prefix}.audit"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    def replies(self, app_id: str) -> str:
        """Return the reply topic of one application."""
        return f"{self.replies_prefix}{_check_id('app_id', app_id)}"

    def holder(self, holder_id: str) -> str:
        """Return the command topic of one holder."""
        return f"{self.holder_prefix}{_check_id('holder_id', holder_id)}"

    def shared(self) -> tuple[str, ...]:
        """Return the topics that exist once per deployment (not per app or holder)."""
        return (
            self.requests,
            self.plans,
            self.fragments,
            self.lifecycle,
            self.acks,
            self.heartbeats,
            self.provisioner,
            self.provisioner_replies,
            self.provisioned,
            self.audit,
            self.deadletter,
        )

    @staticmethod
    def partition_key(message: Message) -> bytes:
        """Return the Kafka record key for a message, as ASCII bytes.

        The key is the operation id for messages of the request path, the
        holder id for holder management and heartbeats, and the request id
        for provisioning. Lifecycle events and audit records use the first of
        their ids that is set. A dead letter is keyed by its source topic and
        partition, so dead letters from one partition stay in order.
        """
        if isinstance(message, DeadLetter):
            return f"{message.source_topic}:{message.partition}".encode("ascii")
        names = _KEY_FIELDS.get(type(message))
        if names is None:
            raise TypeError(f"partition_key() expects a schemas message, got {type(message).__name__}")
        for name in names:
            value = str(getattr(message, name))
            if value:
                return value.encode("ascii")
        # Unreachable: the last field of each list is required to be non-empty.
        raise ValueError(f"{type(message).__name__} has none of the key fields {names} set")


def _check_id(field: str, value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(
            f"{field} must be 1 to 64 of A-Z a-z 0-9 . _ -, got {value[:65]!r}; "
            "it becomes part of a Kafka topic name"
        )
    return value
