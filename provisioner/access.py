"""Short-lived Kafka identities for holders: a certificate and ACLs per holder.

With mutual TLS on, the provisioner gives every holder it starts a
certificate of its own, valid for a few hours (`HolderAccess.validity`), and
the ACLs of the holder role (``shardbus.certs.acls.holder_permissions``):
read its own command topic, write fragments, heartbeats, acknowledgements
and dead letters. At teardown, or when the holder fails, the provisioner
deletes those ACLs, so the certificate is worth nothing from then on even
before it expires.

NOTE: certificates are not renewed. A pooled holder that outlives its
certificate keeps its open connections but cannot open new ones, so after a
broker restart it stops heartbeating and is replaced as failed.

Issuing needs the deployment CA's key, so the provisioner can issue
a certificate for any principal. A CA restricted to holder names would need
name constraints that Kafka's principal mapping does not check.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping

from provisioner.backend import HolderTls
from schemas.topics import Topics
from shardbus.certs import acls, principals
from shardbus.certs.acl_admin import AsyncAclAdmin
from shardbus.certs.authority import CertificateAuthority
from shardbus.certs.folder import TlsFolder
from shardbus.config import Settings
from shardbus.errors import ConfigError, ServiceUnavailable
from shardbus.kafka import client_options

log = logging.getLogger(__name__)

VALIDITY_ENV = "SHARDBUS_HOLDER_CERT_HOURS"
DEFAULT_VALIDITY = datetime.timedelta(hours=4)
MAX_VALIDITY = datetime.timedelta(days=7)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class HolderAccess:
    """Issues each holder's certificate and grants and revokes its ACLs."""

    def __init__(
        self,
        authority: CertificateAuthority,
        topics: Topics,
        acl_admin: AsyncAclAdmin,
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
        clock: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        if not datetime.timedelta(0) < validity <= MAX_VALIDITY:
            raise ValueError(f"holder certificate validity must be positive and at most {MAX_VALIDITY}, "
                             f"got {validity}")
        self._authority = authority
        self._ca_pem = authority.certificate_pem
        self._topics = topics
        self._acl_admin = acl_admin
        self.validity = validity
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> HolderAccess | None:
        """Return the holder access of a TLS deployment, or None when Kafka runs in plaintext.

        Reads the CA from the TLS folder and the validity in hours from
        SHARDBUS_HOLDER_CERT_HOURS (default 4). Raises ConfigError for an
        invalid value or a missing CA.
        """
        if settings.kafka_tls is None:
            return None
        env = os.environ if environ is None else environ
        validity = DEFAULT_VALIDITY
        raw = env.get(VALIDITY_ENV, "").strip()
        if raw:
            try:
                validity = datetime.timedelta(hours=float(raw))
            except ValueError:
                validity = datetime.timedelta(0)
            if not datetime.timedelta(0) < validity <= MAX_VALIDITY:
                raise ConfigError(f"{VALIDITY_ENV}={raw!r} is invalid: expected hours between 0 and "
                                  f"{MAX_VALIDITY.days * 24}, such as 4")
        authority = TlsFolder(settings.tls_dir).load_ca()
        admin = AsyncAclAdmin(settings.kafka_bootstrap, client_options(settings), client_id="provisioner-acls")
        return cls(authority, Topics(settings.topic_prefix), admin, validity=validity)

    def credentials(self, holder_id: str) -> HolderTls:
        """Issue a new certificate for `holder_id`, valid for `validity` from now."""
        identity = self._authority.issue(principals.holder_principal(self._topics.prefix, holder_id),
                                         validity=self.validity, clock=self._clock)
        return HolderTls(ca_pem=self._ca_pem, certificate_pem=identity.certificate_pem, key_pem=identity.key_pem)

    async def grant(self, holder_ids: list[str]) -> None:
        """Create the ACLs of each holder; raises ServiceUnavailable when the broker rejects them."""
        permissions = [p for holder_id in holder_ids for p in acls.holder_permissions(self._topics, holder_id)]
        await self._acl_admin.grant(permissions)
        log.info("granted holders %s their ACLs", ", ".join(holder_ids))

    async def revoke(self, holder_id: str) -> None:
        """Delete every ACL of the holder; a failure is logged, and the certificate still expires."""
        principal = principals.holder_principal(self._topics.prefix, holder_id)
        try:
            count = await self._acl_admin.revoke_principal(principal)
        except ServiceUnavailable as exc:
            log.error("could not revoke the ACLs of holder %s, whose certificate stays valid until it "
                      "expires: %s", holder_id, exc)
            return
        log.info("revoked %d ACLs of holder %s", count, holder_id)

    async def close(self) -> None:
        await self._acl_admin.close()
