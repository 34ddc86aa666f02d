"""Kafka principal names of the parts of shardbus.

The broker and the operator's admin identity belong to the Kafka cluster,
which several deployments may share. Every other principal starts with the
deployment's topic prefix, so a certificate of one deployment is granted
nothing in another that trusts the same CA::

    broker                        the Kafka broker (a super user)
    admin                         the operator; applies ACLs (a super user)
    {prefix}.authorizer           the authorizer service
    {prefix}.reassembler          the reassembler service
    {prefix}.provisioner          the provisioner service
    {prefix}.controller           the CLI of the controlling domain
    {prefix}.app.{app_id}         one application
    {prefix}.holder.{holder_id}   one holder, for its short life

This module uses only the standard library, so the development stack can
import it before the project's dependencies are installed.
"""

from __future__ import annotations

BROKER = "broker"
ADMIN = "admin"

#: The services and the CLI, each with an identity of its own.
SERVICE_ROLES = ("authorizer", "reassembler", "provisioner", "controller")

#: Names a TLS client may use to reach a broker of the development stack.
BROKER_HOSTS = ("localhost", "127.0.0.1")

#: Kafka's mapping from a certificate's distinguished name to its principal:
#: the value of the first CN, and the whole DN for a certificate without one.
PRINCIPAL_MAPPING_RULE = "RULE:^CN=([^,]+).*$/$1/,DEFAULT"


def service_principal(prefix: str, role: str) -> str:
    if role not in SERVICE_ROLES:
        raise ValueError(f"role must be one of {', '.join(SERVICE_ROLES)}, got {role!r}")
    return check_principal(f"{prefix}.{role}")


def app_principal(prefix: str, app_id: str) -> str:
    return check_principal(f"{prefix}.app.{app_id}")


def holder_principal(prefix: str, holder_id: str) -> str:
    return check_principal(f"{prefix}.holder.{holder_id}")


def super_users() -> str:
    """Return the value of the broker's ``super.users`` setting."""
    return f"User:{BROKER};User:{ADMIN}"


def check_principal(principal: str) -> str:
    """Return `principal` if it can be a certificate CN and a Kafka principal name.

    A comma would end the CN in the distinguished name that Kafka maps,
    and ``=``, ``+``, ``;`` or a backslash would be escaped in it, so the
    principal that Kafka maps would differ from the one the ACLs name.
    """
    if not isinstance(principal, str):
        raise TypeError(f"principal must be a str, got {type(principal).__name__}")
    if not 1 <= len(principal) <= 64:
        raise ValueError(f"principal must be 1 to 64 characters, got {len(principal)}")
    bad = sorted({c for c in principal if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        raise ValueError(f"principal {principal!r} contains {''.join(bad)!r}; use only A-Z a-z 0-9 . _ -")
    return principal
