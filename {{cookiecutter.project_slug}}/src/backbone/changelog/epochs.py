"""Writer epochs: how a zombie's late changelog writes are recognised and superseded.

A node frozen past its session (GC pause, SIGSTOP, a partitioned network) can wake up and
append one more batch to a changelog partition that another node owns by then; group
membership cannot stop a write already under way, and Kafka transactions are not used. So:

- An active **claims** a partition when it takes it over: once restored to the
  changelog's end it appends a claim record with epoch = the highest epoch seen + 1, and
  holds the partition only if that record landed exactly at the end it restored to.
- Every changelog record carries its writer's epoch in a header.
- Every reader (restore, standby, read model) skips records of an epoch lower than the
  highest it has applied: a zombie's records never reach a store.
- An active checks that only its own records lie between its store's changelog offset
  and the end of what it just wrote. Records of a newer epoch mean it was superseded: it
  writes nothing to its store and takes the partition over again. Records of an older
  epoch are a zombie's: it re-publishes their keys with its own state, so that the last
  record of every key is a current one, which is the one compaction keeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

EPOCH_HEADER = "writer-epoch"
CLAIM_KEY = b""  # no aggregate has an empty id


class KeyedRecord(Protocol):
    @property
    def key(self) -> bytes | None: ...

    @property
    def headers(self) -> Iterable[tuple[str, bytes]]: ...


def record_epoch(record: KeyedRecord) -> int:
    """The epoch a record was written in; 0 for records written before epochs existed."""
    for name, value in record.headers:
        if name == EPOCH_HEADER:
            return int(value)
    return 0


def epoch_header(epoch: int) -> tuple[str, bytes]:
    return EPOCH_HEADER, str(epoch).encode()


def claim_record(epoch: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return CLAIM_KEY, str(epoch).encode(), [epoch_header(epoch)]


def foreign_ranges(expected: int, ours: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The offset ranges in ``[expected, end of ours)`` that are not in ``ours`` (half-open
    ranges of the records this writer just appended): somebody else wrote there."""
    found = []
    position = expected
    for start, end in sorted(ours):
        if start > position:
            found.append((position, start))
        position = max(position, end)
    return found


class EpochFilter:
    """What one reader of one changelog partition applies: records of the highest epoch
    seen so far, claims excluded. Keys of skipped records are kept in ``stale``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.stale: set[bytes] = set()

    def admit(self, record: KeyedRecord) -> bool:
        epoch = record_epoch(record)
        if epoch < self.epoch:
            if record.key:
                self.stale.add(record.key)
            return False
        self.epoch = epoch
        return record.key is not None and record.key != CLAIM_KEY
