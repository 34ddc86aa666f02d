"""The audit trail: signed, hash-chained records on ``{p}.audit``, and the tools that read them.

- ``writer.AuditLog``: what every service writes through, failing closed.
- ``chain``: the chain and signature format.
- ``verify``: checks chains and signatures (``shardbus audit verify``).
- ``replay``: rebuilds each operation's and a holder's timeline (``shardbus audit replay``).
- ``dump``: decodes records piped from kcat (``python -m shardbus.audit.dump``).
"""

from shardbus.audit.writer import ROLE_PARTITIONS, AuditLog, AuditUnavailable

__all__ = ["ROLE_PARTITIONS", "AuditLog", "AuditUnavailable"]
