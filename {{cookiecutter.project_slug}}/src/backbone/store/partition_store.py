"""One RocksDB database holding the aggregates of one partition and their offsets."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from rocksdict import Rdict, WriteBatch

from backbone.store.options import meta_options, store_options

_INT = struct.Struct(">q")
META_CF = "meta"
CHANGELOG_OFFSET = b"changelog_offset"
INPUT_OFFSET = b"input_offset"
GENERATION = b"generation"
WRITER_EPOCH = b"writer_epoch"
OUTPUTS_SENT = b"outputs_sent"


class StoreLockedError(RuntimeError):
    """Another process (or a leftover handle in this one) holds the store's lock."""


@dataclass(frozen=True, slots=True)
class Meta:
    """Offsets stored with the data. ``changelog_offset`` and ``input_offset`` are the next
    offsets to read (0 when nothing has been applied)."""

    changelog_offset: int
    input_offset: int
    generation: int
    writer_epoch: int = 0  # the highest changelog writer epoch applied (backbone.changelog.epochs)
    # While rebuilding from the input: outputs of input offsets below this were sent.
    outputs_sent: int = 0


class PartitionStore:
    def __init__(self, path: Path, partition: int) -> None:
        self.path = path
        self.partition = partition
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(
                str(path), options=store_options(), column_families={META_CF: meta_options()}
            )
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(
                    f"store {path} is locked by another process: stop the other node using "
                    f"this data dir, or give each node its own DATA_DIR ({exc})"
                ) from exc
            raise
        self._meta_cf = self._db.get_column_family_handle(META_CF)
        self._meta = self._db.get_column_family(META_CF)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return cast(list[bytes | None], self._db.get(cast(list[Any], keys)))

    def _meta_int(self, name: bytes) -> int | None:
        raw = self._meta.get(name)
        return None if raw is None else int(_INT.unpack(raw)[0])

    def changelog_offset(self) -> int:
        """``meta().changelog_offset`` alone, for the read path."""
        return self._meta_int(CHANGELOG_OFFSET) or 0

    def meta(self) -> Meta:
        return Meta(
            changelog_offset=self._meta_int(CHANGELOG_OFFSET) or 0,
            input_offset=self._meta_int(INPUT_OFFSET) or 0,
            generation=self._meta_int(GENERATION) or 0,
            writer_epoch=self._meta_int(WRITER_EPOCH) or 0,
            outputs_sent=self._meta_int(OUTPUTS_SENT) or 0,
        )

    def write(
        self,
        items: Iterable[tuple[bytes, bytes | None]],
        *,
        changelog_offset: int | None = None,
        input_offset: int | None = None,
        generation: int | None = None,
        writer_epoch: int | None = None,
        outputs_sent: int | None = None,
    ) -> None:
        """Apply puts (or deletes, for ``None``) and offsets atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for name, offset in (
            (CHANGELOG_OFFSET, changelog_offset),
            (INPUT_OFFSET, input_offset),
            (GENERATION, generation),
            (WRITER_EPOCH, writer_epoch),
            (OUTPUTS_SENT, outputs_sent),
        ):
            if offset is not None:
                batch.put(name, _INT.pack(offset), self._meta_cf)
        self._db.write(batch)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            yield cast(bytes, key), cast(bytes, value)

    def page(self, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` items in key order, from the first key above ``after``."""
        found: list[tuple[bytes, bytes]] = []
        for key, value in self._db.items(from_key=after):
            if key == after:
                continue
            found.append((cast(bytes, key), cast(bytes, value)))
            if len(found) == limit:
                break
        return found

    def close(self) -> None:
        del self._meta
        del self._meta_cf
        self._db.close()

    @staticmethod
    def wipe(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
