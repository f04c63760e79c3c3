"""Removing static members from the consumer group: this node's own on shutdown, a dead
peer's when every live node sees it dead (docs/decisions/0022)."""
