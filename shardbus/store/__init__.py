"""The controlling domain's storage in Redis: mapping table and backup store."""
