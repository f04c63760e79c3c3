"""RocksDB state: one database per (store, partition), data and metadata in one WriteBatch."""

from backbone.store.partition_store import Meta, PartitionStore, StoreLockedError

__all__ = ["Meta", "PartitionStore", "StoreLockedError"]
