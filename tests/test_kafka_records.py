"""The engine's record path for aiokafka's fetcher (``backbone.kafka_records``) hands over
exactly what aiokafka's own does: the same records, in the same chunks, with the same
positions, for any mix of batches, compression, headers, transactions and fetch offsets."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import aiokafka
import pytest
from aiokafka import ConsumerRecord
from aiokafka.consumer.fetcher import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    FetchResult,
    PartitionRecords,
)
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone import kafka_records

TP = TopicPartition("t.events", 3)

record = st.tuples(
    st.none() | st.binary(max_size=12),
    st.none() | st.binary(max_size=40),
    st.lists(st.tuples(st.text(max_size=6), st.binary(max_size=6)), max_size=2),
)
batch = st.fixed_dictionaries(
    {
        "records": st.lists(record, min_size=1, max_size=8),
        "compression": st.sampled_from([0, 1]),  # none, gzip
        "producer": st.sampled_from([-1, 7, 8]),  # -1: not transactional
        "gap": st.integers(min_value=0, max_value=3),  # offsets left out by compaction
    }
)


def _blob(batches: list[dict[str, Any]]) -> bytes:
    out, offset = b"", 0
    for spec in batches:
        offset += spec["gap"]
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=spec["compression"],
            is_transactional=spec["producer"] != -1,
            producer_id=spec["producer"],
            producer_epoch=0 if spec["producer"] != -1 else -1,
            base_sequence=0 if spec["producer"] != -1 else -1,
            batch_size=1 << 20,
        )
        for delta, (key, value, headers) in enumerate(spec["records"]):
            builder.append(
                delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=headers
            )
        built = bytearray(builder.build())
        built[0:8] = offset.to_bytes(8, "big")  # base offset
        out += bytes(built)
        offset += len(spec["records"])
    return out


def _chunks(
    blob: bytes, fetch_offset: int, max_records: int | None, isolation: int, aborted: list[Any]
) -> list[tuple[list[Any], int]]:
    """Every ``getall`` of one fetch result, with the position after it."""

    async def fetched() -> list[tuple[list[Any], int]]:  # aiokafka's state wants a loop
        state = SubscriptionState()
        state.assign_from_user({TP})
        assignment = state.subscription.assignment
        assignment.state_value(TP).seek(fetch_offset)
        records = PartitionRecords(
            TP, MemoryRecords(blob), aborted, fetch_offset, None, None, True, isolation
        )
        result = FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
        chunks = []
        while result.has_more():
            chunks.append((result.getall(max_records), assignment.state_value(TP).position))
        return chunks

    return asyncio.run(fetched())


@pytest.fixture
def own_path() -> Iterator[None]:
    """aiokafka's own path before and after the test."""
    kafka_records.uninstall()
    yield
    kafka_records.uninstall()


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(batch, min_size=1, max_size=5),
    fetch_offset=st.integers(min_value=0, max_value=10),
    max_records=st.none() | st.integers(min_value=1, max_value=9),
    isolation=st.sampled_from([READ_UNCOMMITTED, READ_COMMITTED]),
    aborted_at=st.none() | st.integers(min_value=0, max_value=20),
)
def test_the_same_records_chunks_and_positions_as_aiokafka(
    batches: list[dict[str, Any]],
    fetch_offset: int,
    max_records: int | None,
    isolation: int,
    aborted_at: int | None,
) -> None:
    blob = _blob(batches)
    aborted = [] if aborted_at is None else [(7, aborted_at)]
    kafka_records.uninstall()
    expected = _chunks(blob, fetch_offset, max_records, isolation, list(aborted))
    assert kafka_records.install()
    try:
        got = _chunks(blob, fetch_offset, max_records, isolation, list(aborted))
    finally:
        kafka_records.uninstall()
    assert _fields(got) == _fields(expected)
    assert all(type(r) is kafka_records.FetchedRecord for chunk, _ in got for r in chunk)


def _fields(chunks: list[tuple[list[Any], int]]) -> list[tuple[list[tuple[Any, ...]], int]]:
    """The chunks with each record as the tuple of ``ConsumerRecord``'s fields."""
    names = [f.name for f in dataclasses.fields(ConsumerRecord)]
    return [([tuple(getattr(r, n) for n in names) for r in chunk], at) for chunk, at in chunks]


def test_a_corrupt_batch_is_refused(own_path: None) -> None:
    blob = bytearray(
        _blob([{"records": [(b"k", b"v", [])], "compression": 0, "producer": -1, "gap": 0}])
    )
    blob[-1] ^= 0xFF
    assert kafka_records.install()
    with pytest.raises(CorruptRecordException):
        _chunks(bytes(blob), 0, None, READ_UNCOMMITTED, [])


def test_another_aiokafka_keeps_its_own_path(
    own_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiokafka, "__version__", "0.99.0")
    assert not kafka_records.install()
    assert PartitionRecords._unpack_records is kafka_records._ORIGINAL[0]
