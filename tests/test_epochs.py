"""Writer epochs (backbone.changelog.epochs): what readers skip, what a writer sees as foreign."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from backbone.changelog.epochs import (
    CLAIM_KEY,
    EpochFilter,
    claim_record,
    epoch_header,
    foreign_ranges,
    record_epoch,
)


@dataclass
class Record:
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def written(key: bytes, epoch: int | None) -> Record:
    return Record(key, [("input-offset", b"7")] + ([] if epoch is None else [epoch_header(epoch)]))


@pytest.mark.parametrize(
    ("expected", "ours", "foreign"),
    [
        (10, [(10, 15)], []),
        (10, [(10, 15), (15, 20)], []),
        (10, [(12, 15)], [(10, 12)]),  # somebody wrote before us
        (10, [(10, 12), (14, 20)], [(12, 14)]),  # ... between two of our record batches
        (10, [(14, 20), (10, 12)], [(12, 14)]),  # acks in any order
        (10, [(11, 12), (13, 14)], [(10, 11), (12, 13)]),
    ],
)
def test_foreign_ranges(
    expected: int, ours: list[tuple[int, int]], foreign: list[tuple[int, int]]
) -> None:
    assert foreign_ranges(expected, ours) == foreign


def test_records_without_an_epoch_are_epoch_0() -> None:
    assert record_epoch(written(b"k", None)) == 0
    assert record_epoch(written(b"k", 12)) == 12
    key, _, headers = claim_record(5)
    assert (key, record_epoch(Record(key, headers))) == (CLAIM_KEY, 5)


def test_a_reader_skips_what_an_older_writer_wrote_after_a_newer_claim() -> None:
    claim_key, _, claim_headers = claim_record(4)
    log = [
        written(b"a", 3),
        written(b"b", 3),
        Record(claim_key, claim_headers),  # the new owner takes over with epoch 4
        written(b"a", 4),
        written(b"b", 3),  # the old owner, woken up: skipped
        written(b"c", 3),  # skipped
        written(b"c", 4),
    ]
    epochs = EpochFilter(0)
    admitted = [r.key for r in log if epochs.admit(r)]
    assert admitted == [b"a", b"b", b"a", b"c"]
    assert epochs.epoch == 4
    assert epochs.stale == {b"b", b"c"}


def test_a_reader_starts_from_the_epoch_its_store_holds() -> None:
    epochs = EpochFilter(7)
    assert not epochs.admit(written(b"a", 6))
    assert epochs.admit(written(b"a", 7))
    assert not epochs.admit(Record(CLAIM_KEY, [epoch_header(8)]))  # a claim holds no data
    assert epochs.epoch == 8
    assert not epochs.admit(written(b"b", 7))
