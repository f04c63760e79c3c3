"""The partition lifecycle driven through every transition, without a broker.

``FakePorts`` stands in for the node's Kafka side (changelog bounds, restore, peers, input
offsets); the stores are real RocksDB stores. Every scenario waits on states with a
deadline, and checks what the partition asked of its ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from backbone.changelog.reader import ChangelogMismatchError
from backbone.node import partition as lifecycle
from backbone.node.partition import Partition, Role, State
from backbone.node.partitions import PartitionSet
from backbone.snapshot.bootstrap import NoSourceError
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry

P = 3


class FakePorts:
    """Records every request; each behaviour is a field a test sets."""

    def __init__(self, data_dir: Path) -> None:
        self.stores = StoreRegistry(data_dir, "customer")
        self.bootstrap_min_lag = 100
        self.bounds = (0, 0)
        self.events_first = 0
        self.history_in_input = True
        self.committed_offset = 0
        self.copies: list[str] = []  # per bootstrap call: "ok", "none", "exists", "fail"
        self.copy_offset = 0  # the changelog offset a peer's copy holds
        self.restore_gate: asyncio.Event | None = None
        self.restore_error: Exception | None = None
        self.claims: list[bool] = []  # results of successive claims (default True)
        self.calls: list[tuple[Any, ...]] = []
        self.tailing: set[int] = set()
        self.active: dict[int, tuple[int, int | None]] = {}

    async def changelog_bounds(self, partition: int) -> tuple[int, int]:
        return self.bounds

    async def restore(self, store: PartitionStore, allow_gap: bool) -> set[bytes]:
        self.calls.append(("restore", allow_gap))
        if self.restore_gate is not None:
            await self.restore_gate.wait()
        if self.restore_error is not None:
            raise self.restore_error
        begin, end = self.bounds
        offset = store.meta().changelog_offset
        if offset < begin and not allow_gap:
            raise ChangelogMismatchError(f"store at {offset} is before the changelog's {begin}")
        store.write((), changelog_offset=end)
        return set()

    def tail(self, store: PartitionStore) -> None:
        self.calls.append(("tail", store.partition))
        self.tailing.add(store.partition)

    def untail(self, partition: int) -> None:
        self.calls.append(("untail", partition))
        self.tailing.discard(partition)

    async def bootstrap(self, partition: int, path: Path, begin: int, end: int) -> None:
        outcome = self.copies.pop(0) if self.copies else "none"
        self.calls.append(("bootstrap", outcome))
        if outcome == "fail":
            raise RuntimeError("peer answered garbage")
        if outcome in ("none", "exists"):
            raise NoSourceError("no copy served", copy_exists=outcome == "exists")
        copy = PartitionStore(path, partition)  # a peer's checkpoint, installed
        copy.write([(b"k", b"v")], changelog_offset=self.copy_offset, input_offset=7)
        copy.close()

    async def claim(self, store: PartitionStore) -> bool:
        won = self.claims.pop(0) if self.claims else True
        self.calls.append(("claim", won))
        return won

    async def republish(self, store: PartitionStore, stale: set[bytes]) -> None:
        self.calls.append(("republish", len(stale)))

    async def events_begin(self, partition: int) -> int:
        return self.events_first

    async def committed(self, partition: int) -> int:
        return self.committed_offset

    async def commit(self, partition: int, offset: int) -> None:
        self.calls.append(("commit", offset))
        self.committed_offset = offset

    def activate(self, partition: int, position: int, quiet_until: int | None) -> None:
        self.calls.append(("activate", position, quiet_until))
        self.active[partition] = (position, quiet_until)

    def deactivate(self, partition: int) -> None:
        self.calls.append(("deactivate", partition))
        self.active.pop(partition, None)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(tmp_path: Path, scenario: Callable[[FakePorts], Coroutine[Any, Any, None]]) -> FakePorts:
    ports = FakePorts(tmp_path)

    async def main() -> None:
        try:
            await scenario(ports)
        finally:
            ports.stores.close_all()

    asyncio.run(main())
    return ports


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RETRY_S", 0.01)
    monkeypatch.setattr(lifecycle, "WAITING_RETRY_S", 0.01)
    monkeypatch.setattr(lifecycle, "INCOMPLETE_RETRY_S", 0.05)


def test_an_active_restores_claims_and_resumes_where_input_was_committed(
    tmp_path: Path,
) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (0, 40)
        ports.committed_offset = 12
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.ACTIVE, "active")
        assert part.ready
        assert ports.active == {P: (12, None)}
        assert ports.stores.get(P) is not None
        assert ports.stores.get(P).meta().changelog_offset == 40  # type: ignore[union-attr]

    ports = run(tmp_path, scenario)
    assert [c[0] for c in ports.calls] == ["restore", "claim", "republish", "activate"]


def test_revoked_during_restore_never_activates(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.restore_gate = asyncio.Event()
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: bool(ports.named("restore")), "the restore to start")
        assert part.state is State.RESTORING and not part.ready
        part.close()
        await part.wait()
        ports.restore_gate.set()
        assert part.state is State.CLOSED and part.done

    ports = run(tmp_path, scenario)
    assert not ports.named("activate") and not ports.named("claim")
    assert ports.named("deactivate") == [("deactivate", P)]


def test_a_lost_claim_restores_again_before_claiming_again(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.claims = [False, True]
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.ACTIVE, "active")

    ports = run(tmp_path, scenario)
    kinds = [c[0] for c in ports.calls]
    assert kinds == ["restore", "claim", "restore", "claim", "republish", "activate"]


def test_supersession_while_active_takes_the_partition_over_again(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.ACTIVE, "active")
        ports.restore_gate = asyncio.Event()
        part.superseded()
        assert part.state is State.RESTORING and not part.ready
        assert P not in ports.active, "a superseded partition stops processing at once"
        ports.restore_gate.set()
        await until(lambda: part.state is State.ACTIVE, "active again")

    ports = run(tmp_path, scenario)
    assert len(ports.named("claim")) == 2 and len(ports.named("activate")) == 2


def test_a_gap_while_tailing_copies_the_partition_again(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (0, 5)
        part = Partition(P, Role.STANDBY, ports)
        part.start()
        await until(lambda: part.state is State.TAILING, "tailing")
        assert part.ready and P in ports.tailing
        ports.tailing.discard(P)  # the reader dropped it when it found the gap
        ports.bounds = (50, 80)
        ports.copies = ["ok"]
        ports.copy_offset = 60
        part.changelog_gap()
        await until(lambda: part.state is State.TAILING and P in ports.tailing, "tailing again")
        assert ports.stores.get(P).meta().changelog_offset == 60  # type: ignore[union-attr]

    ports = run(tmp_path, scenario)
    assert ports.named("bootstrap") == [("bootstrap", "ok")]
    assert len(ports.named("tail")) == 2


def test_a_copy_that_fails_is_retried_until_one_succeeds(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)  # an empty store is behind the changelog's start
        ports.copies = ["fail", "exists", "ok"]
        ports.copy_offset = 70
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.ACTIVE, "active")
        assert ports.active[P] == (7, None), "resumes from the copy's input offset"

    ports = run(tmp_path, scenario)
    assert [c[1] for c in ports.named("bootstrap")] == ["fail", "exists", "ok"]
    assert ports.named("restore") == [("restore", False)], "never rebuilt past a copy"


def test_no_copy_and_deleted_input_waits_incomplete_until_the_loss_is_accepted(
    tmp_path: Path,
) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)
        ports.events_first = 500
        ports.committed_offset = 900
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.INCOMPLETE, "incomplete")
        assert not part.ready and not ports.active
        report = part.accept_loss()
        assert report["missing_changelog_offsets"] == [0, 30]
        assert report["missing_event_offsets"] == [0, 500]
        await until(lambda: part.state is State.REBUILDING, "rebuilding after acceptance")
        meta = ports.stores.get(P).meta()  # type: ignore[union-attr]
        assert meta.outputs_sent == 900, "outputs below the old commit were sent already"
        assert not part.ready, "a rebuild is not served before it has caught up"
        assert part.rebuild is not None and part.rebuild.history_lost
        part.caught_up()  # the processor applied the input up to 900
        assert part.state is State.ACTIVE and part.ready
        assert part.rebuild.as_dict()["finished"] is not None, "the rebuild stays reported"

    ports = run(tmp_path, scenario)
    assert ("restore", True) in ports.calls, "what is left of the changelog is applied"
    assert ports.named("commit") == [("commit", 500)], "the rebuild is recorded first"
    assert ports.active == {P: (500, 900)}


def test_accept_loss_is_refused_unless_incomplete(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.ACTIVE, "active")
        with pytest.raises(LookupError, match="not incomplete"):
            part.accept_loss()

    run(tmp_path, scenario)


def test_an_incomplete_partition_recovers_when_a_copy_turns_up(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)
        ports.events_first = 500
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.INCOMPLETE, "incomplete")
        ports.copies = ["ok"]
        ports.copy_offset = 80
        await until(lambda: part.state is State.ACTIVE, "active from the copy")

    ports = run(tmp_path, scenario)
    assert ("restore", True) not in ports.calls and not ports.named("commit")


def test_no_copy_with_the_whole_input_rebuilds_at_once(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)
        ports.events_first = 0
        ports.committed_offset = 44
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.REBUILDING, "rebuilding")
        assert not part.ready
        assert part.rebuild is not None and not part.rebuild.history_lost
        assert part.rebuild.as_dict() | {"since": 0} == {
            "partition": P,
            "from_offset": 0,
            "caught_up_at": 44,
            "history_lost": False,
            "since": 0,
            "finished": None,
        }
        part.superseded()  # a newer writer epoch while rebuilding: taken over again
        await until(lambda: part.state is State.REBUILDING, "rebuilding again")
        part.caught_up()
        assert part.ready

    ports = run(tmp_path, scenario)
    assert ports.active == {P: (0, 44)}


def test_after_a_repartitioning_no_copy_waits_for_one_though_the_input_starts_at_0(
    tmp_path: Path,
) -> None:
    """A new generation's input holds only what came after its base: rebuilding from it
    would drop every aggregate the derived copies hold."""

    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (1, 1)
        ports.events_first = 0
        ports.history_in_input = False
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.state is State.INCOMPLETE, "incomplete")
        ports.copies = ["ok"]
        ports.copy_offset = 1
        await until(lambda: part.state is State.ACTIVE, "active from the copy")

    ports = run(tmp_path, scenario)
    assert ("restore", True) not in ports.calls and not ports.named("commit")


def test_a_standby_with_a_gap_and_no_copy_waits_then_tails_a_copy(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)
        part = Partition(P, Role.STANDBY, ports)
        part.start()
        await until(lambda: part.state is State.WAITING, "waiting")
        assert not part.ready
        ports.copies = ["ok"]
        ports.copy_offset = 85
        await until(lambda: part.state is State.TAILING, "tailing a copy")

    ports = run(tmp_path, scenario)
    assert ("restore", True) not in ports.calls


def test_a_changelog_from_elsewhere_fails_the_partition(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        ports.restore_error = ChangelogMismatchError("the changelog was recreated")
        part = Partition(P, Role.ACTIVE, ports)
        part.start()
        await until(lambda: part.done, "the lifecycle to end")
        assert part.state is State.FAILED
        assert part.failure == f"partition {P}: the changelog was recreated"

    run(tmp_path, scenario)


def test_a_failed_partition_is_named_with_its_failure_for_reads(tmp_path: Path) -> None:
    """What a read of its keys answers (503 without retry-after): the operator's reason."""

    async def scenario(ports: FakePorts) -> None:
        ports.restore_error = ChangelogMismatchError("the changelog was recreated")
        held = PartitionSet(ports, 8)
        held.assign({P}, set())
        await until(lambda: held.failure(P) is not None, "the failure")
        assert held.failure(P) == f"partition {P}: the changelog was recreated"
        assert held.failure(P + 1) is None  # not held here: no reason to give

    run(tmp_path, scenario)


def test_assignment_back_to_the_same_node_reuses_the_open_store(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        held = PartitionSet(ports, 8)
        held.assign({P}, {5})
        await until(lambda: held.all_active_ready(), "the active")
        await until(lambda: held.serving(5) is not None, "the standby")
        store = ports.stores.get(P)
        held.revoke({P})  # an eager rebalance revokes every active first
        assert held.in_role(Role.ACTIVE) == set() and ports.stores.get(P) is store
        held.assign({P}, {5})
        await until(lambda: held.all_active_ready(), "the active again")
        assert ports.stores.get(P) is store, "the store stayed open across the rebalance"
        store.write((), changelog_offset=7)
        # The standby becomes the active here, and the old active goes.
        held.revoke({P})
        held.assign({5}, set())
        await until(lambda: held.all_active_ready(), "the promoted standby")
        assert held.states() == {"5": "active"}
        assert ports.stores.get(P) is None and P in held.known_offsets
        offsets, active, standby = held.local_state()
        assert offsets[P] == 7 and active == {5} and standby == set()

    ports = run(tmp_path, scenario)
    assert ("untail", 5) in ports.calls


def test_an_empty_store_or_one_with_a_gap_is_no_copy_for_the_planner(tmp_path: Path) -> None:
    """Reported, an empty store's offset can pass for caught up (within ACCEPTABLE_LAG of
    the best copy), and the planner would drop the last real copy (issue 9's invariant)."""

    async def scenario(ports: FakePorts) -> None:
        ports.bounds = (30, 90)
        ports.events_first = 500  # the input was truncated too: no rebuild, incomplete
        held = PartitionSet(ports, 8)
        held.assign({P}, set())
        await until(lambda: held.in_state(State.INCOMPLETE) == {P}, "incomplete")
        ports.stores.open(P).write((), changelog_offset=12)  # a stale store with a gap
        empty = ports.stores.open(5)
        assert empty.meta().changelog_offset == 0
        offsets, _, _ = held.local_state()
        assert P not in offsets and 5 not in offsets, offsets
        ports.stores.open(6).write((), changelog_offset=40)
        assert held.local_state()[0] == {6: 40}

    run(tmp_path, scenario)


def test_close_of_a_standby_stops_tailing(tmp_path: Path) -> None:
    async def scenario(ports: FakePorts) -> None:
        part = Partition(P, Role.STANDBY, ports)
        part.start()
        await until(lambda: part.state is State.TAILING, "tailing")
        part.close()
        assert part.state is State.CLOSED and P not in ports.tailing

    run(tmp_path, scenario)
