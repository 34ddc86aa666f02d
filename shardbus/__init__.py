"""shardbus: a secrets service that never keeps a secret whole."""

__version__ = "0.1.0"
