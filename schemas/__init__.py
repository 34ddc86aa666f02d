"""shardbus schemas."""
