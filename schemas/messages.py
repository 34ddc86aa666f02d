"""Every message type of the wire contract, in one namespace.

The types are defined by area in ``schemas.operations`` (the request path),
``schemas.holders`` (holder management) and ``schemas.audit`` (audit trail
and dead letters). Importing this module registers all of them in
``MESSAGE_TYPES``, the registry the codec decodes against.
"""

from __future__ import annotations

from schemas.audit import AuditRecord, DeadLetter
from schemas.base import FORMAT_VERSION, MAX_MESSAGE_SIZE, MESSAGE_TYPES, Message, WireRecord
from schemas.holders import (
    DestroyFragment,
    EventKind,
    HolderAck,
    HolderHeartbeat,
    HolderLifecycle,
    HolderStatus,
    LifecycleEvent,
    LoadedFragment,
    ProvisionedHolder,
    ProvisionReply,
    ProvisionRequest,
    StoreFragment,
)
from schemas.operations import (
    ErrorReply,
    FetchCommand,
    FragmentError,
    FragmentResponse,
    HolderSlot,
    Kem,
    LeaseReply,
    Operation,
    OperationPlan,
    OperationRequest,
    Reason,
    ReleaseRequest,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_TYPES",
    "AuditRecord",
    "DeadLetter",
    "DestroyFragment",
    "ErrorReply",
    "EventKind",
    "FetchCommand",
    "FragmentError",
    "FragmentResponse",
    "HolderAck",
    "HolderHeartbeat",
    "HolderLifecycle",
    "HolderSlot",
    "HolderStatus",
    "Kem",
    "LeaseReply",
    "LifecycleEvent",
    "LoadedFragment",
    "Message",
    "Operation",
    "OperationPlan",
    "OperationRequest",
    "ProvisionReply",
    "ProvisionRequest",
    "ProvisionedHolder",
    "Reason",
    "ReleaseRequest",
    "StoreFragment",
    "WireRecord",
]
