"""Derive the stores of a new generation's partitions from checkpoints of the old ones,
on the node that holds them: no changelog replay, no network.

Each child is written into a staging directory and renamed into place once complete and
flushed, so a store of the new generation either exists whole or not at all; a crash
leaves only staging directories, which the next attempt removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from backbone.codec import rebase_fence
from backbone.partitioning import partition_for
from backbone.store.options import meta_options, store_options
from backbone.store.partition_store import (
    CHANGELOG_OFFSET,
    GENERATION,
    INPUT_OFFSET,
    META_CF,
    WRITER_EPOCH,
)

# A new generation's changelog starts with one marker record that is then deleted, so that
# its history visibly starts at 1: a store can only come from a derived or bootstrapped
# copy, never from replaying a changelog that lacks the derived base.
FIRST_CHANGELOG_OFFSET = 1
_BATCH = 20_000


@dataclass(frozen=True, slots=True)
class Derived:
    children: tuple[int, ...]
    keys: int
    bytes: int
    seconds: float


def staging_root(root: Path) -> Path:
    return root.with_name(root.name + ".staging")


def derive(
    sources: list[Path], root: Path, generation: int, count: int, children: list[int]
) -> Derived:
    """Write the stores ``root/<child>`` of ``children`` (partitions of a ``count``-partition
    layout) from the keys of the checkpoints ``sources``. Children that already exist are
    kept: they were derived before a crash. Blocking: run it in a worker process.

    For a merge (one child, gathered from its parents) every key belongs to the child, so
    keys are hashed only for a split."""
    started = time.monotonic()
    todo = [c for c in children if not (root / str(c)).exists()]
    if not todo:
        return Derived(tuple(children), 0, 0, 0.0)
    staging = staging_root(root)
    for child in todo:
        shutil.rmtree(staging / str(child), ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    dbs = {
        child: Rdict(
            str(staging / str(child)),
            options=store_options(),
            column_families={META_CF: meta_options()},
        )
        for child in todo
    }
    batches = {child: WriteBatch(raw_mode=True) for child in todo}
    pending = dict.fromkeys(todo, 0)
    unlogged = WriteOptions()
    # The staging copy is flushed before it is renamed into place. (The stub calls this
    # property a method.)
    unlogged.disable_wal = True  # type: ignore[method-assign,assignment]
    keys = size = 0
    single = todo[0] if len(sources) > 1 else None  # a merge: k >= 2 parents, one child
    for source in sources:
        db = Rdict(
            str(source),
            options=Options(raw_mode=True),
            column_families={META_CF: Options(raw_mode=True)},
            access_type=AccessType.read_only(),
        )
        try:
            for key, value in cast(Iterator[tuple[bytes, bytes]], db.items()):
                child = single if single is not None else partition_for(key, count)
                batch = batches.get(child)
                if batch is None:
                    continue
                batch.put(key, rebase_fence(value))
                keys += 1
                size += len(key) + len(value)
                pending[child] += 1
                if pending[child] >= _BATCH:
                    dbs[child].write(batch, unlogged)
                    batches[child] = WriteBatch(raw_mode=True)
                    pending[child] = 0
        finally:
            db.close()
    for child, db in dbs.items():
        batch = batches[child]
        meta = db.get_column_family_handle(META_CF)
        offsets: list[tuple[bytes, int]] = [
            (CHANGELOG_OFFSET, FIRST_CHANGELOG_OFFSET),
            (INPUT_OFFSET, 0),
            (GENERATION, generation),
            (WRITER_EPOCH, 0),
        ]
        for name, offset in offsets:
            batch.put(name, offset.to_bytes(8, "big", signed=True), meta)
        db.write(batch, unlogged)
        del meta
        db.flush()
        db.close()
    root.mkdir(parents=True, exist_ok=True)
    for child in todo:
        os.rename(staging / str(child), root / str(child))
    _fsync_dir(root)
    with contextlib.suppress(OSError):  # another derivation may still be staging
        staging.rmdir()
    return Derived(tuple(children), keys, size, time.monotonic() - started)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
