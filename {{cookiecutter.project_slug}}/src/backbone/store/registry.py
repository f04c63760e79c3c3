"""Which partition stores this process has open, under ``<data_dir>/<store>/g<gen>/<p>``.

A store RocksDB cannot open (a corrupt CURRENT or MANIFEST, missing files) is moved aside
to ``<data_dir>/quarantine/`` and replaced by an empty one, which the node then recovers
from a peer or the changelog: one bad store never takes the other partitions down, and
nothing is deleted that an operator may want to inspect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from backbone.store.partition_store import PartitionStore, StoreLockedError

log = structlog.get_logger(__name__)


class StoreRegistry:
    def __init__(self, data_dir: Path, store: str, generation: int = 0) -> None:
        self.root = data_dir / store / f"g{generation}"
        self.quarantine = data_dir / "quarantine"
        self.store = store
        self.generation = generation
        self._open: dict[int, PartitionStore] = {}

    def path(self, partition: int) -> Path:
        return self.root / str(partition)

    def open(self, partition: int) -> PartitionStore:
        store = self._open.get(partition)
        if store is None:
            path = self.path(partition)
            try:
                store = PartitionStore(path, partition)
            except StoreLockedError:
                raise
            except Exception as exc:
                if not path.exists():
                    raise  # nothing on disk to blame: a permission or disk problem
                self._quarantine(partition, path, exc)
                store = PartitionStore(path, partition)
            self._open[partition] = store
        return store

    def _quarantine(self, partition: int, path: Path, error: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.quarantine.mkdir(parents=True, exist_ok=True)
        moved = self.quarantine / f"{self.store}-g{self.generation}-p{partition}-{stamp}"
        suffix = 0
        while moved.exists():
            suffix += 1
            moved = moved.with_name(f"{moved.name.split('.')[0]}.{suffix}")
        os.rename(path, moved)
        log.error(
            "store_quarantined",
            partition=partition,
            path=str(path),
            moved_to=str(moved),
            error=str(error),
            detail="RocksDB cannot open this store: it was moved aside and the partition "
            "is recovered from a peer or the changelog; delete the quarantined copy once "
            "you no longer need it",
        )

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
