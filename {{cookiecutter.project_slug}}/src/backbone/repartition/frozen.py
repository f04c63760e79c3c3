"""The previous generation's stores, read-only, while a node switches generations: they
hold every write below the barrier, so GETs are answered while the new parts start."""

from __future__ import annotations

from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from backbone.partitioning import partition_for
from backbone.store.partition_store import CHANGELOG_OFFSET, META_CF


class FrozenStores:
    """``drained``: per old partition, the changelog offset its store must have reached to
    hold everything below the barrier; a store behind it is not served."""

    def __init__(self, root: Path, partitions: int, drained: dict[int, int]) -> None:
        self.partitions = partitions
        self._dbs: dict[int, Rdict] = {}
        for p, end in drained.items():
            path = root / str(p)
            if (path / "CURRENT").exists():
                try:
                    # Read-only: takes no lock, so the store stays free for whoever needs it.
                    self._dbs[p] = Rdict(
                        str(path),
                        options=Options(raw_mode=True),
                        column_families={META_CF: Options(raw_mode=True)},
                        access_type=AccessType.read_only(),
                    )
                except Exception:  # a store that does not open is not served
                    continue
                meta = self._dbs[p].get_column_family(META_CF)
                raw = meta.get(CHANGELOG_OFFSET)
                del meta
                if raw is None or int.from_bytes(raw, "big", signed=True) < end:
                    self._dbs.pop(p).close()

    def lookup(self, key: bytes) -> tuple[bool, bytes | None]:
        """(whether this node holds the key's old partition, the stored value)."""
        db = self._dbs.get(partition_for(key, self.partitions))
        if db is None:
            return False, None
        value: bytes | None = db.get(key)
        return True, value

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()
