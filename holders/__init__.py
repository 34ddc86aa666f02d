"""shardbus holders."""
