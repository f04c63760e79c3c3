"""The routing view the group leader publishes: what it holds, its bytes, its size at scale,
and how a routing table takes views from the topic (newest generation wins)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import zlib
from pathlib import Path

import msgspec
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.structs import ConsumerRecord

from backbone.assignment import (
    BackboneAssignor,
    RoutingView,
    RoutingViewError,
    ViewMember,
    decode_view,
    encode_view,
)
from backbone.kafka_connection import KafkaConnection
from backbone.node.routing import Replica, Routes, RoutingTable

BENCH = Path(__file__).resolve().parent.parent / "bench"
# Measured by bench/assignment_size.py: 80,672 bytes for 1,200 members (400 nodes x 3
# processes, 3 zones), 3,600 partitions and 2 standbys. The bound leaves room for noise in
# the store offsets the members report, not for a layout that grows with members x
# partitions.
VIEW_BYTES_1200_MEMBERS = 100_000


class Cluster:
    def __init__(self, topic: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions)) if topic == self.topic else None


def leader_view(members: int, partitions: int, standbys: int, generation: int) -> RoutingView:
    """A rebalance through the real assignor; the view its leader hands to ``publish``."""
    assignors = {
        f"member-{i}": BackboneAssignor(
            node=f"node-{i}",
            zone=f"z{i % 3}",
            endpoint=f"http://10.0.0.{i}:8000",
            standby_replicas=standbys,
            local_state=lambda i=i: ({i: 100 + i}, frozenset(), frozenset()),
        )
        for i in range(members)
    }
    joined = {
        mid: ConsumerProtocol.METADATA.decode(a.metadata(["svc.events"]).encode())
        for mid, a in assignors.items()
    }
    published: list[RoutingView] = []
    leader = assignors["member-0"]
    leader.publish, leader.group_generation = published.append, lambda: generation
    leader.assign(Cluster("svc.events", partitions), joined)
    assert len(published) == 1
    return published[0]


def test_the_leader_publishes_the_view_of_its_plan() -> None:
    view = leader_view(members=3, partitions=6, standbys=1, generation=12)
    assert view.generation == 12 and view.partitions == 6
    assert view.members == [
        ViewMember(f"node-{i}", f"z{i % 3}", f"http://10.0.0.{i}:8000") for i in range(3)
    ]
    routes = Routes.of(view)
    assert sorted(routes.active) == list(range(6))
    for p in range(6):
        (standby,) = routes.standbys[p]
        assert standby != routes.active[p]
    # each member reported a store of the partition numbered like it, at offset 100 + i
    assert routes.holders[1] == [(Replica("node-1", "z1", "http://10.0.0.1:8000"), 101)]
    assert 5 not in routes.holders
    assert routes.zone_conflicts() == [] and routes.unmet == []


def test_a_view_survives_its_bytes() -> None:
    view = leader_view(members=4, partitions=8, standbys=2, generation=3)
    data = encode_view(view)
    assert decode_view(data) == view
    assert (
        Routes.of(decode_view(data)).as_dict()["partitions"]
        == Routes.of(view).as_dict()["partitions"]
    )


def test_a_publish_that_fails_does_not_fail_the_assignment() -> None:
    def broken(_: RoutingView) -> None:
        raise RuntimeError("no producer")

    assignor = BackboneAssignor(
        node="n",
        zone="z",
        endpoint="http://n",
        standby_replicas=0,
        local_state=lambda: ({}, set(), set()),
    )
    assignor.publish = broken
    joined = {"m": ConsumerProtocol.METADATA.decode(assignor.metadata(["t"]).encode())}
    result = assignor.assign(Cluster("t", 2), joined)
    assert [tp.partition for tp in result["m"].partitions()] == [0, 1]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"not zlib at all", "not zlib"),
        (zlib.compress(b"\x93\x01\x02"), "not a routing view"),
        (zlib.compress(msgspec.msgpack.encode({"generation": 1})), "not a routing view"),
        (
            zlib.compress(
                msgspec.msgpack.encode([1, 4, [["n", "z", "e"]], [0, 1], [[], []], [[], []]])
            ),
            "active 1 is not one of 1 members",
        ),
        (
            zlib.compress(msgspec.msgpack.encode([1, 4, [["n", "z", "e"]], [0], [[3]], [[]]])),
            "a standby is not one of 1",
        ),
        (
            zlib.compress(msgspec.msgpack.encode([1, 4, [["n", "z", "e"]], [0], [[]], [[[2, 9]]]])),
            "a holder is not one of 1",
        ),
        (
            zlib.compress(msgspec.msgpack.encode([1, 4, [], [-1, -1], [[]], [[], []]])),
            "one of each per partition",
        ),
        (zlib.compress(msgspec.msgpack.encode([0, 4, [], [], [], []])), "version 0"),
        (encode_view(leader_view(2, 4, 1, 1))[:-9], "truncated"),
    ],
)
def test_a_bad_record_is_refused_with_a_clear_error(data: bytes, says: str) -> None:
    with pytest.raises(RoutingViewError, match=says):
        decode_view(data)


def test_a_record_that_inflates_without_bound_is_refused() -> None:
    with pytest.raises(RoutingViewError, match="inflates past"):
        decode_view(zlib.compress(b"\x00" * (65 * 1024 * 1024)))


def test_the_view_of_1200_members_and_3600_partitions_stays_small() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("assignment_size")
    finally:
        sys.path.remove(str(BENCH))
    size = bench.routing_view_bytes(members=1_200, partitions=3_600, standbys=2)
    assert 0 < size < VIEW_BYTES_1200_MEMBERS, size


def record(key: bytes, value: bytes | None, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "svc.routing", 0, offset, 0, 0, key, value, None, len(key), len(value or b""), ()
    )


def test_the_table_keeps_the_newest_generation_of_its_group() -> None:
    async def follow() -> None:
        local = {"generation": 5}
        table = RoutingTable(
            KafkaConnection("localhost:1"), "svc", "svc.routing", lambda: local["generation"]
        )
        assert table.routes.group_state == "Unknown" and table.owner(0) is None
        v5, v4 = leader_view(2, 4, 1, 5), leader_view(3, 4, 1, 4)
        table._apply(record(b"svc", encode_view(v5), 0))
        assert table.routes.group_state == "Stable" and table.routes.generation == 5
        owner = table.owner(0)
        assert owner is not None and owner.node in ("node-0", "node-1")
        table._apply(record(b"svc", encode_view(v4), 1))  # a former leader, late
        assert table.routes.generation == 5
        table._apply(record(b"svc-g1", encode_view(leader_view(2, 8, 1, 9)), 2))  # not ours
        table._apply(record(b"svc", b"garbage", 3))  # logged, ignored
        assert table.routes.generation == 5 and len(table.routes.active) == 4
        local["generation"] = 6  # this node joined a newer generation: its view is not in yet
        assert table.routes.group_state == "Rebalancing"
        table._apply(record(b"svc", encode_view(leader_view(2, 4, 0, 6)), 4))
        assert table.routes.group_state == "Stable" and table.routes.standbys == {}
        # the group was created again: its first generation replaces what is held
        table._apply(record(b"svc", encode_view(leader_view(2, 4, 1, 1)), 5))
        assert table.routes.generation == 1
        table._apply(record(b"svc", None, 6))  # a tombstone forgets the view
        assert table.routes.group_state == "Unknown" and table.routes.active == {}
        # an admin command
        outside = RoutingTable(KafkaConnection("localhost:1"), "svc", "svc.routing")
        outside._apply(record(b"svc", encode_view(v4), 0))
        assert outside.routes.group_state == "Stable"

    asyncio.run(follow())


def test_a_node_missing_from_the_view_of_its_generation_rejoins_once() -> None:
    async def follow() -> None:
        rejoins: list[int] = []
        table = RoutingTable(
            KafkaConnection("localhost:1"),
            "svc",
            "svc.routing",
            lambda: 5,
            self_endpoint="http://10.0.0.9:8000",  # restarted on another port
            rejoin=lambda: rejoins.append(1),
        )
        table._apply(record(b"svc", encode_view(leader_view(2, 4, 1, 5)), 0))
        table._check_listed()
        table._check_listed()
        assert rejoins == [1]
        listed = RoutingTable(
            KafkaConnection("localhost:1"),
            "svc",
            "svc.routing",
            lambda: 5,
            self_endpoint="http://10.0.0.1:8000",
            rejoin=lambda: rejoins.append(2),
        )
        listed._apply(record(b"svc", encode_view(leader_view(2, 4, 1, 5)), 0))
        listed._check_listed()
        assert rejoins == [1]

    asyncio.run(follow())
