"""Create, list and delete Kafka ACLs.

aiokafka 0.14 has no ACL API, so this module uses kafka-python's
KafkaAdminClient, which is synchronous. Async callers (the provisioner) run
it in a worker thread through `AsyncAclAdmin`.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    # kafka-python loads its protocol schemas with importlib.resources
    # functions that Python 3.11 deprecates, once per schema.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )
    from kafka.errors import KafkaError as SyncKafkaError

from shardbus.certs.acls import Operation, Pattern, Permission, Resource
from shardbus.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_RESOURCE_TYPES = {Resource.TOPIC: ResourceType.TOPIC, Resource.GROUP: ResourceType.GROUP,
                   Resource.CLUSTER: ResourceType.CLUSTER}
_PATTERN_TYPES = {Pattern.LITERAL: ACLResourcePatternType.LITERAL, Pattern.PREFIXED: ACLResourcePatternType.PREFIXED}
_OPERATIONS = {Operation.READ: ACLOperation.READ, Operation.WRITE: ACLOperation.WRITE,
               Operation.CREATE: ACLOperation.CREATE, Operation.DELETE: ACLOperation.DELETE,
               Operation.DESCRIBE: ACLOperation.DESCRIBE, Operation.ALTER: ACLOperation.ALTER,
               Operation.DESCRIBE_CONFIGS: ACLOperation.DESCRIBE_CONFIGS}


class AclAdmin:
    """A connection to Kafka that manages ACLs; close it when done.

    `options` are the client settings from `shardbus.kafka.client_options`.
    The principal they identify needs ALTER on the cluster (DESCRIBE to
    list), which the operator's admin identity and the provisioner have.
    """

    def __init__(self, bootstrap: str, options: dict[str, Any], *, client_id: str = "shardbus-acls") -> None:
        try:
            self._client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, **options)
        except SyncKafkaError as exc:
            raise ServiceUnavailable(f"cannot reach Kafka at {bootstrap} to manage ACLs: {exc}") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AclAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def grant(self, permissions: Iterable[Permission]) -> int:
        """Create one ALLOW ACL per permission; existing ones are left as they are.

        Returns the number of ACLs sent. Raises ServiceUnavailable naming
        the first ACL the broker rejected.
        """
        acls = [_to_acl(p) for p in permissions]
        if not acls:
            return 0
        try:
            result = self._client.create_acls(acls)
        except SyncKafkaError as exc:
            raise ServiceUnavailable(f"creating {len(acls)} ACLs failed: {exc}") from None
        if result["failed"]:
            acl, error = result["failed"][0]
            raise ServiceUnavailable(
                f"the broker rejected {len(result['failed'])} of {len(acls)} ACLs, the first "
                f"({acl.principal} {acl.operation.name} on {acl.resource_pattern.resource_name}) with {error}; "
                "check that this identity has ALTER on the cluster"
            )
        return len(acls)

    def revoke_principal(self, principal: str) -> int:
        """Delete every ACL that names `principal`; return how many were deleted."""
        acl_filter = ACLFilter(
            principal=f"User:{principal}", host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        try:
            [(_, deleted, error)] = self._client.delete_acls([acl_filter])
        except SyncKafkaError as exc:
            raise ServiceUnavailable(f"deleting the ACLs of {principal} failed: {exc}") from None
        if error is not None and getattr(error, "errno", 0):
            raise ServiceUnavailable(f"deleting the ACLs of {principal} failed: {error}")
        return len(deleted)

    def list(self, principal: str | None = None) -> list[Permission]:
        """Return the ALLOW ACLs of `principal`, or of every principal, that this module can express."""
        acl_filter = ACLFilter(
            principal=f"User:{principal}" if principal else None, host="*", operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        try:
            acls, error = self._client.describe_acls(acl_filter)
        except SyncKafkaError as exc:
            raise ServiceUnavailable(f"listing ACLs failed: {exc}") from None
        if getattr(error, "errno", 0):
            raise ServiceUnavailable(f"listing ACLs failed: {error}")
        found = [_from_acl(acl) for acl in acls]
        return sorted(p for p in found if p is not None)


class AsyncAclAdmin:
    """`AclAdmin` for asyncio code: each call runs in a worker thread, one at a time."""

    def __init__(self, bootstrap: str, options: dict[str, Any], *, client_id: str = "shardbus-acls") -> None:
        self._bootstrap = bootstrap
        self._options = options
        self._client_id = client_id
        self._admin: AclAdmin | None = None
        # KafkaAdminClient is not safe for use from two threads at once.
        self._lock = asyncio.Lock()

    async def _call(self, method: str, *args: Any) -> Any:
        async with self._lock:
            if self._admin is None:
                self._admin = await asyncio.to_thread(AclAdmin, self._bootstrap, self._options,
                                                      client_id=self._client_id)
            return await asyncio.to_thread(getattr(self._admin, method), *args)

    async def grant(self, permissions: Iterable[Permission]) -> int:
        return await self._call("grant", list(permissions))

    async def revoke_principal(self, principal: str) -> int:
        return await self._call("revoke_principal", principal)

    async def close(self) -> None:
        async with self._lock:
            if self._admin is not None:
                await asyncio.to_thread(self._admin.close)
                self._admin = None


def _to_acl(permission: Permission) -> ACL:
    return ACL(
        principal=f"User:{permission.principal}",
        host="*",
        operation=_OPERATIONS[permission.operation],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(
            _RESOURCE_TYPES[permission.resource], permission.name, _PATTERN_TYPES[permission.pattern]
        ),
    )


def _from_acl(acl: ACL) -> Permission | None:
    resources = {v: k for k, v in _RESOURCE_TYPES.items()}
    patterns = {v: k for k, v in _PATTERN_TYPES.items()}
    operations = {v: k for k, v in _OPERATIONS.items()}
    pattern = acl.resource_pattern
    kind, principal = acl.principal.partition(":")[::2]
    if kind != "User" or pattern.resource_type not in resources or pattern.pattern_type not in patterns:
        return None
    if acl.operation not in operations:
        return None
    return Permission(principal, resources[pattern.resource_type], pattern.resource_name,
                      patterns[pattern.pattern_type], operations[acl.operation])
