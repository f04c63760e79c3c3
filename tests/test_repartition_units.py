"""Dynamic repartitioning, unit by unit: the key layout (backbone.repartition.layout), the
derivation of child stores from checkpoints (derive), the control-log fold (plan), the late
fence of the applier and the write gate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Rdict

from backbone import Context, Domain, Event, Handlers
from backbone.codec import LATE_HEADER, NO_OFFSET, AggregateCodec
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier, BatchResult
from backbone.repartition.derive import FIRST_CHANGELOG_OFFSET, derive, staging_root
from backbone.repartition.gate import Target, WriteGate, WritesPausedError
from backbone.repartition.layout import (
    LayoutError,
    check_counts,
    child_of,
    children,
    parents,
    split_keys,
)
from backbone.repartition.plan import (
    ABORTED,
    BARRIER,
    DERIVED,
    DRAINED,
    PAUSED,
    REQUESTED,
    RETIRED,
    SWITCHED,
    Generation,
    fold,
    record,
)
from backbone.snapshot.checkpoint import create_checkpoint
from backbone.store import PartitionStore
from backbone.store.partition_store import Meta

# --- layout -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=0, max_size=64),
    n=st.integers(min_value=1, max_value=16),
    k=st.integers(min_value=2, max_value=4),
)
def test_a_split_sends_each_key_to_one_child_of_its_parent(key: bytes, n: int, k: int) -> None:
    new = k * n
    parent = partition_for(key, n)
    child = partition_for(key, new)
    kids = children(parent, n, new)
    assert kids == [parent + i * n for i in range(k)]
    assert child in kids
    assert child_of(key, new) == child
    for kid in kids:
        assert parents(kid, n, new) == [parent]
    check_counts(n, new)


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=0, max_size=64),
    m=st.integers(min_value=1, max_value=16),
    k=st.integers(min_value=2, max_value=4),
)
def test_a_merge_gathers_the_parents_congruent_to_the_child(key: bytes, m: int, k: int) -> None:
    old = k * m  # merge old -> m = old / k
    parent = partition_for(key, old)
    child = partition_for(key, m)
    assert children(parent, old, m) == [parent % m] == [child]
    assert parents(child, old, m) == [p for p in range(old) if p % m == child]
    assert len(parents(child, old, m)) == k
    assert parent in parents(child, old, m)
    check_counts(old, m)


def test_every_partition_of_a_split_or_merge_is_some_parents_child() -> None:
    for n in range(1, 17):
        for k in (2, 3, 4):
            split = sorted(c for p in range(n) for c in children(p, n, k * n))
            assert split == list(range(k * n))
            merged = sorted(p for c in range(n) for p in parents(c, k * n, n))
            assert merged == list(range(k * n))


def test_split_keys_keeps_only_the_wanted_children() -> None:
    items = [(b"key-%d" % i, b"v%d" % i) for i in range(500)]
    out = list(split_keys(items, 8, {1, 5}))
    assert out == [(partition_for(k, 8), k, v) for k, v in items if partition_for(k, 8) in {1, 5}]
    assert {c for c, _, _ in out} == {1, 5}


@pytest.mark.parametrize(("current", "wanted"), [(3, 6), (3, 9), (4, 12), (6, 3), (6, 2), (4, 1)])
def test_check_counts_accepts_a_split_or_a_merge(current: int, wanted: int) -> None:
    check_counts(current, wanted)


@pytest.mark.parametrize(
    ("current", "wanted", "word"),
    [
        (6, 6, "already"),
        (4, 6, "not a split"),
        (4, 7, "multiple"),
        (6, 4, "not a merge"),
        (6, 5, "divide"),
        (6, 0, "at least 1"),
        (6, -2, "at least 1"),
    ],
)
def test_check_counts_refuses_and_says_why(current: int, wanted: int, word: str) -> None:
    with pytest.raises(LayoutError, match=word):
        check_counts(current, wanted)


# --- derive -----------------------------------------------------------------------------


class Counter(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    count: int = 0
    tags: list[str] = msgspec.field(default_factory=list)


CODEC: AggregateCodec[Counter] = AggregateCodec(Counter)


@dataclass(frozen=True)
class Original:
    partition: int
    offset: int
    aggregate: Counter


def keys_of(partition: int, count: int, how_many: int, prefix: str = "agg") -> list[bytes]:
    keys: list[bytes] = []
    i = 0
    while len(keys) < how_many:
        key = f"{prefix}-{i}".encode()
        if partition_for(key, count) == partition:
            keys.append(key)
        i += 1
    return keys


def parent_store(
    root: Path, partition: int, count: int, how_many: int
) -> tuple[PartitionStore, dict[bytes, Original]]:
    """A parent store of ``count`` partitions: one-fence values, and some with two fences
    (already derived once), as a real store holds them."""
    store = PartitionStore(root / str(partition), partition)
    originals: dict[bytes, Original] = {}
    items: list[tuple[bytes, bytes]] = []
    for i, key in enumerate(keys_of(partition, count, how_many)):
        aggregate = Counter(id=key.decode(), count=i, tags=[f"t{i % 7}"])
        offset = 10 * i + partition
        late = 5 * i if i % 3 == 0 else NO_OFFSET
        items.append((key, CODEC.encode(offset, aggregate, late)))
        originals[key] = Original(partition, offset, aggregate)
    store.write(items, changelog_offset=len(items), input_offset=10 * how_many, generation=0)
    return store, originals


def child_contents(root: Path, child: int) -> tuple[dict[bytes, bytes], Meta]:
    store = PartitionStore(root / str(child), child)
    try:
        return dict(store.items()), store.meta()
    finally:
        store.close()


def check_child(root: Path, child: int, count: int, originals: dict[bytes, Original]) -> set[bytes]:
    data, meta = child_contents(root, child)
    assert meta.changelog_offset == FIRST_CHANGELOG_OFFSET == 1
    assert meta.input_offset == 0
    assert meta.generation == 1
    for key, value in data.items():
        assert partition_for(key, count) == child, key
        fence, late, aggregate = CODEC.decode_fenced(value)
        assert fence == NO_OFFSET
        assert late == originals[key].offset
        assert aggregate == originals[key].aggregate
    return set(data)


@pytest.mark.parametrize(("n", "k"), [(4, 2), (3, 3)])
def test_derive_splits_a_parent_into_its_children(tmp_path: Path, n: int, k: int) -> None:
    parent = n - 1
    new = k * n
    store, originals = parent_store(tmp_path / "g0", parent, n, 2000)
    try:
        checkpoint, _ = create_checkpoint(store, tmp_path / "work")
    finally:
        store.close()
    root = tmp_path / "g1"
    kids = children(parent, n, new)
    done = derive([checkpoint], root, generation=1, count=new, children=kids)
    assert done.children == tuple(kids)
    assert done.keys == len(originals)

    seen: list[bytes] = []
    for child in kids:
        got = check_child(root, child, new, originals)
        assert got, f"child {child} got no keys out of 2000"
        seen.extend(got)
    assert len(seen) == len(set(seen)) == len(originals)  # none lost, none duplicated
    assert set(seen) == set(originals)
    assert sorted(p.name for p in root.iterdir()) == sorted(str(c) for c in kids)

    # Again (a restart after success): the children exist, nothing is written.
    again = derive([checkpoint], root, generation=1, count=new, children=kids)
    assert again.keys == 0
    assert set().union(*(set(child_contents(root, c)[0]) for c in kids)) == set(originals)


def test_derive_replaces_what_a_crash_left_in_staging(tmp_path: Path) -> None:
    n, new = 2, 4
    store, originals = parent_store(tmp_path / "g0", 1, n, 2000)
    try:
        checkpoint, _ = create_checkpoint(store, tmp_path / "work")
    finally:
        store.close()
    root = tmp_path / "g1"
    kids = children(1, n, new)  # [1, 3]
    # A crash half-way: child 1 half-written in staging, with a key it must not keep.
    staging = staging_root(root)
    assert staging == tmp_path / "g1.staging"
    half = Rdict(str(staging / "1"))
    half[b"junk-from-crash"] = b"\x00" * 9
    half.close()
    (staging / "3").mkdir(parents=True)
    (staging / "3" / "garbage").write_bytes(b"not a database")

    derive([checkpoint], root, generation=1, count=new, children=kids)
    got: set[bytes] = set()
    for child in kids:
        got |= check_child(root, child, new, originals)
    assert got == set(originals)
    assert b"junk-from-crash" not in got
    assert not (staging / "1").exists() and not (staging / "3").exists()


def test_derive_keeps_a_child_derived_before_a_crash(tmp_path: Path) -> None:
    n, new = 2, 4
    store, originals = parent_store(tmp_path / "g0", 0, n, 1000)
    try:
        checkpoint, _ = create_checkpoint(store, tmp_path / "work")
    finally:
        store.close()
    root = tmp_path / "g1"
    first = derive([checkpoint], root, generation=1, count=new, children=[0])
    zero_before, _ = child_contents(root, 0)
    assert first.keys == len(zero_before) > 0
    second = derive([checkpoint], root, generation=1, count=new, children=[0, 2])
    assert second.keys == len(originals) - len(zero_before)  # only child 2 was written
    assert child_contents(root, 0)[0] == zero_before
    got = check_child(root, 0, new, originals) | check_child(root, 2, new, originals)
    assert got == set(originals)


def test_derive_merges_parents_into_one_child(tmp_path: Path) -> None:
    n, m = 4, 2
    child = 1
    sources: list[Path] = []
    originals: dict[bytes, Original] = {}
    for parent in parents(child, n, m):  # 1 and 3
        store, mine = parent_store(tmp_path / "g0", parent, n, 800)
        assert not set(mine) & set(originals)
        originals.update(mine)
        try:
            sources.append(create_checkpoint(store, tmp_path / "work")[0])
        finally:
            store.close()
    root = tmp_path / "g1"
    done = derive(sources, root, generation=1, count=m, children=[child])
    assert done.keys == len(originals) == 1600
    assert check_child(root, child, m, originals) == set(originals)  # the union


# --- the control log --------------------------------------------------------------------

G0 = Generation(0, 6)


def requested(to: int = 12, number: int = 1, at: float = 1.0) -> tuple[bytes, bytes]:
    return record(number, REQUESTED, "node-a", to=to, at=at)


def barrier(offsets: dict[int, int], number: int = 1, who: str = "node-a") -> tuple[bytes, bytes]:
    return record(number, BARRIER, who, offsets={str(p): o for p, o in offsets.items()})


def drained(partition: int, end: int, number: int = 1) -> tuple[bytes, bytes]:
    return record(number, DRAINED, f"node-{partition}", partition=partition, changelog_end=end)


def derived(kids: list[int], node: str = "node-a", zone: str = "z1") -> tuple[bytes, bytes]:
    return record(1, DERIVED, node, children=kids, node=node, zone=zone)


def switched(at: float = 9.0) -> tuple[bytes, bytes]:
    return record(1, SWITCHED, "node-a", at=at)


FIRST = {p: 100 + p for p in range(6)}
SECOND = {p: 900 for p in range(6)}


def test_a_request_makes_a_plan() -> None:
    state = fold(G0, [requested()])
    assert state.current == G0
    assert state.plan is not None
    assert state.plan.source == G0
    assert state.plan.target == Generation(1, 12)
    assert state.plan.requested_at == 1.0
    assert state.plan.split
    assert state.plan.step == REQUESTED
    assert state.plan.children(2) == [2, 8]
    state = fold(G0, [requested(), record(1, PAUSED, "node-b", at=2.0)])
    assert state.plan is not None and state.plan.paused == {"node-b": 2.0}
    assert state.plan.step == PAUSED


def test_the_first_barrier_wins() -> None:
    state = fold(G0, [requested(), barrier(FIRST), barrier(SECOND, who="node-b")])
    assert state.plan is not None
    assert state.plan.barrier == FIRST


def test_drained_and_derived_are_counted() -> None:
    records = [requested(), barrier(FIRST)]
    records += [drained(p, 50 + p) for p in range(6)]
    records += [drained(0, 999)]  # a second report does not move the end
    records += [derived([0, 6], "node-a", "z1"), derived([0, 6], "node-b", "z2")]
    records += [derived([1, 7], "node-b", "z2")]
    state = fold(G0, records)
    plan = state.plan
    assert plan is not None
    assert plan.drained == {p: 50 + p for p in range(6)}
    both = {"node-a", "node-b"}
    assert plan.derived == {0: both, 6: both, 1: {"node-b"}, 7: {"node-b"}}
    assert plan.derived_zones[0] == {"z1", "z2"}
    assert plan.underived() == [2, 3, 4, 5, 8, 9, 10, 11]
    assert plan.step == DERIVED


def test_a_split_derives_only_from_copies_that_hold_all_their_parent_drained() -> None:
    records = [requested(), barrier(FIRST)] + [drained(p, 50) for p in range(3)]
    plan = fold(G0, records).plan
    assert plan is not None
    # 0 caught up, 1 lags by one record, 2 is ahead, 4 is held but not drained yet.
    assert plan.derivable({0: 50, 1: 49, 2: 51, 4: 80}) == [0, 2]


def test_a_merge_waits_for_every_parent_and_for_copies_here_that_lag() -> None:
    ends = {p: 50 + p for p in range(6)}
    plan = fold(G0, [requested(to=3), barrier(ends)] + [drained(p, ends[p]) for p in range(5)]).plan
    assert plan is not None and not plan.split
    assert plan.parents(1) == [1, 4]
    # Child 2 waits: its parent 5 has not drained.
    assert plan.derivable(ends) == [0, 1]
    # Child 1 waits while this node's copy of parent 4 lags, even one record behind:
    # deriving from it would lose that record. Not holding 4 at all is fine (fetched).
    assert plan.derivable({**ends, 4: ends[4] - 1}) == [0]
    assert plan.derivable({0: ends[0], 1: ends[1]}) == [0, 1]
    # Only the holders of a child's first parent derive it.
    assert plan.derivable({3: ends[3], 4: ends[4]}) == []


def test_drained_and_derived_before_the_barrier_are_ignored() -> None:
    state = fold(G0, [requested(), drained(0, 5), derived([0, 6])])
    assert state.plan is not None
    assert state.plan.drained == {} and state.plan.derived == {}


def all_derived() -> list[tuple[bytes, bytes]]:
    return [derived(children(p, 6, 12)) for p in range(6)]


def test_a_switch_before_every_child_is_derived_is_ignored() -> None:
    records = [requested(), barrier(FIRST), *[drained(p, 1) for p in range(6)]]
    records += all_derived()[:-1]  # children of partition 5 missing
    state = fold(G0, [*records, switched()])
    assert state.current == G0
    assert state.plan is not None and state.plan.switched_at is None
    assert state.plan.underived() == [5, 11]
    assert state.previous is None


def test_a_switch_makes_the_target_current() -> None:
    records = [requested(), barrier(FIRST), *[drained(p, 1) for p in range(6)]]
    records += [*all_derived(), switched(at=9.0), switched(at=10.0)]
    state = fold(G0, records)
    assert state.current == Generation(1, 12)
    assert state.plan is None
    assert state.previous is not None
    assert state.previous.target == Generation(1, 12)
    assert state.previous.source == G0
    assert state.previous.switched_at == 9.0  # the first switch wins
    assert state.previous.step == SWITCHED
    # A request for generation 2 may now follow, from the new current one.
    after = fold(G0, [*records, requested(to=6, number=2)])
    assert after.plan is not None and after.plan.source == Generation(1, 12)
    assert not after.plan.split


@pytest.mark.parametrize("number", [0, 2, 5])
def test_a_request_for_a_generation_that_is_not_next_is_ignored(number: int) -> None:
    assert fold(G0, [requested(number=number)]).plan is None


def test_a_second_request_does_not_replace_the_plan() -> None:
    state = fold(G0, [requested(to=12), requested(to=3, at=5.0)])
    assert state.plan is not None and state.plan.target == Generation(1, 12)
    assert state.plan.requested_at == 1.0


def test_records_of_another_generation_do_not_change_the_plan() -> None:
    records = [requested(), barrier(FIRST, number=2), drained(0, 3, number=2)]
    records += [record(2, DERIVED, "x", children=[0], node="x", zone="z")]
    records += [record(0, ABORTED, "x"), record(2, SWITCHED, "x", at=1.0)]
    state = fold(G0, records)
    assert state.current == G0
    plan = state.plan
    assert plan is not None
    assert plan.barrier is None and plan.drained == {} and plan.derived == {}
    assert not plan.aborted and plan.switched_at is None


def test_an_abort_after_the_barrier_is_ignored() -> None:
    state = fold(G0, [requested(), barrier(FIRST), record(1, ABORTED, "node-a")])
    assert state.plan is not None and not state.plan.aborted
    assert state.plan.barrier == FIRST


def test_an_abort_before_the_barrier_ends_the_plan() -> None:
    state = fold(G0, [requested(), record(1, ABORTED, "node-a"), barrier(FIRST)])
    assert state.plan is None
    assert state.current == G0
    # The same generation number may be requested again.
    again = fold(G0, [requested(), record(1, ABORTED, "node-a"), requested(to=3)])
    assert again.plan is not None and again.plan.target == Generation(1, 3)


def test_retired_clears_the_previous_plan() -> None:
    records = [requested(), barrier(FIRST), *[drained(p, 1) for p in range(6)]]
    records += [*all_derived(), switched()]
    assert fold(G0, [*records, record(0, RETIRED, "node-a")]).previous is not None
    state = fold(G0, [*records, record(1, RETIRED, "node-a")])
    assert state.previous is None
    assert state.current == Generation(1, 12)


def test_record_refuses_an_unknown_step() -> None:
    with pytest.raises(ValueError, match="unknown step"):
        record(1, "exploded", "node-a")


# --- the late fence ---------------------------------------------------------------------


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    total: int = 0
    seen: list[int] = msgspec.field(default_factory=list)


class Added(Event, frozen=True, kw_only=True):
    amount: int


tally_handlers: Handlers[Tally] = Handlers()


@tally_handlers.on(Added)
def added(state: Tally | None, event: Added, ctx: Context) -> Tally:
    current = state or Tally(id=ctx.aggregate_id)
    return Tally(
        id=current.id, total=current.total + event.amount, seen=[*current.seen, ctx.offset]
    )


TALLY = Domain(name="tally", aggregate=Tally, handlers=tally_handlers)
TALLIES: AggregateCodec[Tally] = AggregateCodec(Tally)


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "tally-input-g1"
    partition: int = 3
    timestamp: int = 0


def add(offset: int, amount: int, late_from: bytes | None = None, key: bytes = b"t1") -> Rec:
    headers = [] if late_from is None else [(LATE_HEADER, late_from)]
    return Rec(offset, key, msgspec.json.encode(Added(amount=amount)), headers)


def run(applier: BatchApplier[Tally], store: PartitionStore, records: list[Rec]) -> BatchResult:
    result = applier.apply(store, records)
    assert not result.dead, result.dead
    store.write(result.dirty.items(), input_offset=result.next_offset)
    return result


@pytest.fixture
def tally_store(tmp_path: Path) -> Iterator[PartitionStore]:
    store = PartitionStore(tmp_path / "g1" / "3", 3)
    yield store
    store.close()


def test_a_late_record_forwarded_twice_is_applied_once(tally_store: PartitionStore) -> None:
    applier = BatchApplier(TALLY)
    first = run(applier, tally_store, [add(0, 5, b"3/100"), add(1, 7, b"3/100")])
    assert (first.applied, first.skipped, first.late) == (1, 1, 1)
    fence, late, tally = TALLIES.decode_fenced(tally_store.get(b"t1") or b"")
    assert (fence, late, tally.total, tally.seen) == (0, 100, 5, [0])
    # The same forward once more, in a later batch, at yet another offset.
    again = run(applier, tally_store, [add(2, 5, b"3/100"), add(3, 1, b"3/99")])
    assert (again.applied, again.skipped) == (0, 2)
    assert TALLIES.decode_fenced(tally_store.get(b"t1") or b"")[2].total == 5
    # A later record of the old partition is applied, and moves the late fence.
    later = run(applier, tally_store, [add(4, 2, b"3/101"), add(5, 3, b"3/101")])
    assert (later.applied, later.skipped, later.late) == (1, 1, 1)
    fence, late, tally = TALLIES.decode_fenced(tally_store.get(b"t1") or b"")
    assert (fence, late, tally.total, tally.seen) == (4, 101, 7, [0, 4])


def test_a_new_record_after_a_rebased_value_is_applied_from_offset_0(
    tally_store: PartitionStore,
) -> None:
    # As derive leaves it: no fence in the new topic, the old offset as the late fence.
    tally_store.write([(b"t1", TALLIES.encode(NO_OFFSET, Tally(id="t1", total=10), 500))])
    applier = BatchApplier(TALLY)
    result = run(applier, tally_store, [add(0, 1), add(0, 1), add(1, 2, b"7/500")])
    assert (result.applied, result.skipped, result.late) == (1, 2, 0)
    fence, late, tally = TALLIES.decode_fenced(tally_store.get(b"t1") or b"")
    assert (fence, late, tally.total, tally.seen) == (0, 500, 11, [0])
    # Normal records go on from there; a late one above the fence still gets in.
    result = run(applier, tally_store, [add(1, 2), add(2, 4, b"7/501")])
    assert (result.applied, result.late) == (2, 1)
    fence, late, tally = TALLIES.decode_fenced(tally_store.get(b"t1") or b"")
    assert (fence, late, tally.total) == (2, 501, 17)


def test_a_value_with_one_fence_has_no_late_fence(tally_store: PartitionStore) -> None:
    tally_store.write([(b"t1", TALLIES.encode(3, Tally(id="t1", total=1)))])
    result = run(BatchApplier(TALLY), tally_store, [add(4, 1, b"3/0"), add(5, 1, b"3/0")])
    assert (result.applied, result.skipped, result.late) == (1, 1, 1)
    assert TALLIES.decode_fenced(tally_store.get(b"t1") or b"")[:2] == (4, 0)


# --- the write gate ---------------------------------------------------------------------


def test_pause_waits_for_writes_under_way_and_refuses_new_ones() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        gate = WriteGate(Target("orders-g0", 6))
        release = asyncio.Event()
        entered = asyncio.Event()

        async def write() -> None:
            async with gate.writing() as target:
                assert target == Target("orders-g0", 6)
                entered.set()
                await release.wait()
                events.append("write acknowledged")

        writer = asyncio.create_task(write())
        await asyncio.wait_for(entered.wait(), timeout=5)
        pausing = asyncio.create_task(gate.pause())
        async with asyncio.timeout(5):  # pause() has refused new writes, and still waits
            while gate.paused_since is None:
                await asyncio.sleep(0)
        assert not pausing.done()
        assert gate.paused_since is not None
        with pytest.raises(WritesPausedError, match="paused"):
            async with gate.writing():
                pass
        release.set()
        await asyncio.wait_for(pausing, timeout=5)
        events.append("paused")
        await asyncio.wait_for(writer, timeout=5)
        with pytest.raises(WritesPausedError):
            async with gate.writing():
                pass
        await asyncio.wait_for(gate.pause(), timeout=5)  # paused and idle: at once
        gate.resume(Target("orders-g1", 12))
        assert gate.paused_since is None
        async with gate.writing() as target:
            assert target == Target("orders-g1", 12)
        assert gate.target == Target("orders-g1", 12)
        return events

    assert asyncio.run(scenario()) == ["write acknowledged", "paused"]


def test_pause_with_nothing_under_way_returns_at_once() -> None:
    async def scenario() -> None:
        gate = WriteGate(Target("t", 1))
        await asyncio.wait_for(gate.pause(), timeout=5)
        first = gate.paused_since
        await gate.pause()
        assert gate.paused_since == first  # the pause keeps its start

    asyncio.run(scenario())


def test_a_failed_write_still_lets_pause_return() -> None:
    async def scenario() -> None:
        gate = WriteGate(Target("t", 1))
        with pytest.raises(RuntimeError, match="boom"):
            async with gate.writing():
                raise RuntimeError("boom")
        await asyncio.wait_for(gate.pause(), timeout=5)

    asyncio.run(scenario())
