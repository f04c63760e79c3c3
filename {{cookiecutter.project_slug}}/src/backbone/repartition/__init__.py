"""Dynamic repartitioning: a live service moves from N to k·N or N/k partitions with its
state (docs/decisions/0016-repartitioning.md)."""
