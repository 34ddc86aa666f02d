"""shardbus streams."""
