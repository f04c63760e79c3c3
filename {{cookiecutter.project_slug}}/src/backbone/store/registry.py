"""Which partition stores this process has open, under ``<data_dir>/<store>/g<gen>/<p>``."""

from __future__ import annotations

from pathlib import Path

from backbone.store.partition_store import PartitionStore


class StoreRegistry:
    def __init__(self, data_dir: Path, store: str, generation: int = 0) -> None:
        self.root = data_dir / store / f"g{generation}"
        self.generation = generation
        self._open: dict[int, PartitionStore] = {}

    def path(self, partition: int) -> Path:
        return self.root / str(partition)

    def open(self, partition: int) -> PartitionStore:
        store = self._open.get(partition)
        if store is None:
            store = PartitionStore(self.path(partition), partition)
            self._open[partition] = store
        return store

    def get(self, partition: int) -> PartitionStore | None:
        return self._open.get(partition)

    def close(self, partition: int) -> None:
        store = self._open.pop(partition, None)
        if store is not None:
            store.close()

    def close_all(self) -> None:
        for partition in list(self._open):
            self.close(partition)

    @property
    def partitions(self) -> set[int]:
        return set(self._open)
