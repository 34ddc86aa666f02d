"""shardbus provisioner."""
