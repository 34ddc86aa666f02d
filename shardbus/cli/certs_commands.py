"""`shardbus certs init | issue | env | acl apply | acl list | acl revoke`.

The certificates live in the TLS folder, ``$SHARDBUS_TLS_DIR`` or
``$SHARDBUS_HOME/tls`` (see shardbus.certs.folder). `acl apply` connects to
Kafka (and Redis) as the operator's admin identity: run it with the
variables that ``scripts/stack env --tls`` prints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex

from schemas.topics import Topics
from shardbus.certs import principals
from shardbus.config import Settings
from shardbus.errors import ConfigError

#: A holder lives for hours, so its certificate may not outlive a week.
MAX_HOLDER_HOURS = 24 * 7
MAX_HOURS = 10 * 365 * 24


def register(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="issue TLS certificates and apply Kafka and Redis ACLs")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init", help="create the CA (once) and the certificates of the broker, the admin, "
        "each service and each app in the policy file",
    )
    init.add_argument("--broker-host", action="append", default=[], metavar="NAME",
                      help="another DNS name or IP address of the broker for its certificate, besides "
                      "localhost and 127.0.0.1 (repeatable; used only when the broker's certificate is issued)")
    init.set_defaults(handler=_init)

    issue = actions.add_parser("issue", help="issue a certificate for one party")
    issue.add_argument("kind", choices=["app", "service", "holder"], help="the kind of party")
    issue.add_argument("name", help="app id, service role (authorizer, reassembler, provisioner, "
                                    "controller) or holder id")
    issue.add_argument("--hours", type=float, default=None, metavar="HOURS",
                       help="validity in hours (default: 365 days; holders 4 hours)")
    issue.set_defaults(handler=_issue)

    env = actions.add_parser("env", help="print the exports that make a process use one party's identity")
    env.add_argument("kind", choices=["app", "service", "admin"])
    env.add_argument("name", nargs="?", default="", help="app id or service role (none for admin)")
    env.set_defaults(handler=_env)

    acl = actions.add_parser("acl", help="manage the Kafka ACLs and Redis users of this deployment")
    acl_actions = acl.add_subparsers(dest="acl_command", required=True, metavar="ACTION")
    apply = acl_actions.add_parser(
        "apply", help="grant every service and every app in the policy file what its role needs; "
        "create the Redis users when SHARDBUS_REDIS_ADMIN_URL is set",
    )
    apply.set_defaults(handler=_acl_apply)
    listing = acl_actions.add_parser("list", help="list the ACLs of one principal, or all")
    listing.add_argument("principal", nargs="?", default=None)
    listing.set_defaults(handler=_acl_list)
    revoke = acl_actions.add_parser("revoke", help="delete every ACL of one principal")
    revoke.add_argument("principal")
    revoke.set_defaults(handler=_acl_revoke)


def _folder(settings: Settings):
    from shardbus.certs.folder import TlsFolder

    return TlsFolder(settings.tls_dir)


def _registered_apps(settings: Settings) -> list[str]:
    from shardbus.policy import load_policy

    if not settings.policy_path.exists():
        return []
    return sorted(load_policy(settings.policy_path).apps)


def _init(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    folder = _folder(settings)
    authority, created = folder.create_ca()
    print(f"{'created' if created else 'using'} the CA in {folder.ca_certificate_path}")
    wanted: list[tuple[str, tuple[str, ...]]] = [
        (principals.BROKER, principals.BROKER_HOSTS + tuple(args.broker_host)),
        (principals.ADMIN, ()),
    ]
    wanted += [(principals.service_principal(settings.topic_prefix, role), ()) for role in principals.SERVICE_ROLES]
    wanted += [(principals.app_principal(settings.topic_prefix, app), ()) for app in _registered_apps(settings)]
    for principal, hosts in wanted:
        files, issued = folder.ensure_identity(authority, principal, hosts=hosts)
        if issued:
            print(f"issued {principal}: {files.certificate}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    prefix = settings.topic_prefix
    if args.kind == "app":
        principal = principals.app_principal(prefix, args.name)
    elif args.kind == "service":
        principal = principals.service_principal(prefix, args.name)
    else:
        principal = principals.holder_principal(prefix, args.name)
    hours = args.hours if args.hours is not None else (4.0 if args.kind == "holder" else 365 * 24.0)
    max_hours = MAX_HOLDER_HOURS if args.kind == "holder" else MAX_HOURS
    if not 0 < hours <= max_hours:
        raise ValueError(f"--hours must be positive and at most {max_hours} for a {args.kind}, got {hours:g}")
    folder = _folder(settings)
    authority = folder.load_ca()
    identity = authority.issue(principal, validity=datetime.timedelta(hours=hours))
    files = folder.write_identity(identity)
    print(f"issued {principal}, valid until {identity.not_valid_after:%Y-%m-%d %H:%M} UTC: {files.certificate}")
    return 0


def _env(args: argparse.Namespace) -> int:
    from shardbus.certs import redis_users

    settings = Settings.from_env()
    folder = _folder(settings)
    if args.kind == "admin":
        principal = principals.ADMIN
    elif not args.name:
        raise ValueError(f"'certs env {args.kind}' needs a name: the app id or the service role")
    elif args.kind == "app":
        principal = principals.app_principal(settings.topic_prefix, args.name)
    else:
        principal = principals.service_principal(settings.topic_prefix, args.name)
    if not folder.has(principal):
        raise ConfigError(f"{folder.path} has no certificate for {principal}; run 'shardbus certs init' "
                          f"or 'shardbus certs issue' first")
    exports = folder.files(principal).environment()
    if args.kind == "service" and redis_users.url_file(folder.path, principal).exists():
        exports["SHARDBUS_REDIS_URL"] = redis_users.read_role_url(folder.path, principal)
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _admin(settings: Settings):
    from shardbus.certs.acl_admin import AclAdmin
    from shardbus.kafka import client_options

    if settings.kafka_tls is None:
        raise ConfigError(
            "ACLs need a TLS connection as the admin: set SHARDBUS_KAFKA_TLS_CA, SHARDBUS_KAFKA_TLS_CERT "
            "and SHARDBUS_KAFKA_TLS_KEY ('scripts/stack env --tls' prints them)"
        )
    return AclAdmin(settings.kafka_bootstrap, client_options(settings))


def _acl_apply(args: argparse.Namespace) -> int:
    from shardbus.certs import acls, redis_users

    settings = Settings.from_env()
    topics = Topics(settings.topic_prefix)
    apps = _registered_apps(settings)
    with _admin(settings) as admin:
        count = admin.grant(acls.deployment_permissions(topics, apps))
    print(f"granted {count} ACLs to the services and {len(apps)} apps of prefix {topics.prefix}")
    admin_url = os.environ.get("SHARDBUS_REDIS_ADMIN_URL", "")
    if admin_url:
        made = redis_users.apply_users(admin_url, settings.topic_prefix, settings.tls_dir)
        print(f"created the Redis users {', '.join(sorted(made))}; their URLs are in {settings.tls_dir}")
    else:
        print("SHARDBUS_REDIS_ADMIN_URL is not set, so no Redis users were created")
    return 0


def _acl_list(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    with _admin(settings) as admin:
        for permission in admin.list(args.principal):
            print(permission)
    return 0


def _acl_revoke(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    principals.check_principal(args.principal)
    with _admin(settings) as admin:
        count = admin.revoke_principal(args.principal)
    print(f"deleted {count} ACLs of {args.principal}")
    return 0
