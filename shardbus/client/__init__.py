"""The client SDK an application uses to lease secrets from shardbus."""

from shardbus.client.client import Lease, ShardbusClient

__all__ = ["Lease", "ShardbusClient"]
