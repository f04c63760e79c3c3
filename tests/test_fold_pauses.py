"""The fold pauses every FOLD_STEP records, so that the processor's event loop turns while a
large batch is applied (the batch in flight is sent and acknowledged meanwhile), and pausing
changes nothing in what it folds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from backbone import Context, Domain, Event, Handlers
from backbone.codec import AggregateCodec
from backbone.processing.apply import FOLD_STEP, BatchApplier, step
from backbone.processing.processor import _folded
from backbone.store import PartitionStore


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    total: int = 0
    last: int = -1


class Bumped(Event, frozen=True, kw_only=True):
    by: int


handlers: Handlers[Counter] = Handlers()


@handlers.on(Bumped)
def bumped(state: Counter | None, event: Bumped, ctx: Context) -> Counter:
    current = state or Counter(id=ctx.aggregate_id)
    return Counter(id=current.id, total=current.total + event.by, last=ctx.offset)


COUNTERS = Domain(name="counters", aggregate=Counter, handlers=handlers)
CODEC: AggregateCodec[Counter] = AggregateCodec(Counter)
KEYS = [f"k-{i}".encode() for i in range(7)]


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    topic: str = "counters-input"
    partition: int = 0
    timestamp: int = 0


class CountingStore(PartitionStore):
    """A real RocksDB store that counts the keys read from it."""

    reads: int = 0

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        self.reads += len(keys)
        return super().get_many(keys)


def records(count: int) -> list[Rec]:
    return [
        Rec(n, KEYS[n % len(KEYS)], msgspec.json.encode(Bumped(by=n % 5 + 1))) for n in range(count)
    ]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[CountingStore, CountingStore]]:
    a, b = CountingStore(tmp_path / "a", 0), CountingStore(tmp_path / "b", 0)
    yield a, b
    a.close()
    b.close()


def test_a_fold_pauses_every_step_and_folds_what_apply_folds(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    paused, whole = stores
    batch = records(2 * FOLD_STEP + 3)
    steps = BatchApplier(COUNTERS).fold(paused, batch)
    pauses = 0
    while (result := step(steps)) is None:
        pauses += 1
    assert pauses == 2
    reference = BatchApplier(COUNTERS).apply(whole, batch)
    assert result.dirty == reference.dirty
    assert (result.applied, result.next_offset) == (len(batch), len(batch))
    assert paused.reads == whole.reads == len(KEYS)  # each key read once, pauses or not
    totals = {k: 0 for k in KEYS}
    for n in range(len(batch)):
        totals[KEYS[n % len(KEYS)]] += n % 5 + 1
    for key, value in result.dirty.items():
        _, _, counter = CODEC.decode_fenced(value)
        assert counter.total == totals[key]


def test_the_event_loop_turns_while_a_large_batch_is_folded(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    store, _ = stores
    batch = records(3 * FOLD_STEP)

    async def fold_beside_a_ticker() -> int:
        """Counts the event loop's turns while the fold runs: a callback that schedules
        itself again runs once per turn."""
        loop = asyncio.get_running_loop()
        ticks = 0
        folding = True

        def tick() -> None:
            nonlocal ticks
            if folding:
                ticks += 1
                loop.call_soon(tick)

        loop.call_soon(tick)
        result = await _folded(BatchApplier(COUNTERS).fold(store, batch))
        folding = False
        assert result.applied == len(batch)
        return ticks

    ticks = asyncio.run(fold_beside_a_ticker())
    assert ticks == 3  # once at each of the fold's two pauses, once at its end
