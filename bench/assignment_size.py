"""Size of the group assignment the leader sends, and the time to compute it.

1,200 members (400 nodes x 3 processes) in 3 zones, 3,600 partitions, 2 standbys. Every
member joins as aiokafka makes it join: ``BackboneAssignor.metadata()`` encoded as a
ConsumerProtocolMemberMetadata, reporting the previous generation's tasks and the changelog
offsets of its stores; the leader's ``assign()`` runs on the decoded metadata, and every
member's ConsumerProtocolMemberAssignment is encoded into one SyncGroup request (v3), as the
leader sends it. Compared with the naive layout where each member's user_data also carries
the whole partition -> (active endpoint, standby endpoints) map.

The leader also publishes the routing view of its plan to the routing topic, which every
node reads once per rebalance: ``routing_view_bytes`` is its encoded size (the record's
value), ``routing_view_raw_bytes`` its size before zlib. No Kafka needed. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from typing import Any

import msgspec
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberAssignment
from aiokafka.protocol.group import SyncGroupRequest, SyncGroupRequest_v3

from backbone.assignment import BackboneAssignor, MemberInfo, RoutingView, plan
from backbone.assignment.protocol import decode_assignment
from backbone.assignment.view import decode_view, encode_view

from _common import machine

TOPIC = "customer-backbone.events"
GROUP = "customer-backbone"
MIB = 1024 * 1024


class Cluster:
    """The part of aiokafka's ClusterMetadata the assignor reads."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions)) if topic == TOPIC else None


class Member:
    def __init__(self, node: int, process: int, zones: int) -> None:
        self.node = f"node-{node:03d}"
        self.zone = f"zone-{node % zones}"
        self.endpoint = f"http://10.{node % zones}.{node // 256}.{node % 256}:{8000 + process}"
        # aiokafka member ids are "<client_id>-<uuid4>"
        self.member_id = (
            f"customer-backbone-{self.node}-p{process}-{uuid.UUID(int=node * 8 + process)}"
        )
        self.offsets: dict[int, int] = {}
        self.active: frozenset[int] = frozenset()
        self.standby: frozenset[int] = frozenset()

    def local_state(self) -> tuple[dict[int, int], frozenset[int], frozenset[int]]:
        return self.offsets, self.active, self.standby

    def assignor(self, standbys: int) -> BackboneAssignor:
        return BackboneAssignor(
            node=self.node,
            zone=self.zone,
            endpoint=self.endpoint,
            standby_replicas=standbys,
            local_state=self.local_state,
        )


def previous_generation(members: list[Member], partitions: int, standbys: int) -> None:
    """Give every member the tasks and store offsets of a settled previous generation."""
    rng = random.Random(7)
    head = {p: rng.randrange(1_000_000, 1_000_000_000) for p in range(partitions)}
    infos = [MemberInfo(m.member_id, m.node, m.zone) for m in members]
    settled = plan(infos, partitions, standbys)
    for m in members:
        actives = settled.actives[m.member_id]
        replicas = settled.standbys[m.member_id]
        m.active, m.standby = frozenset(actives), frozenset(replicas)
        m.offsets = {p: head[p] for p in actives}
        m.offsets.update({p: head[p] - rng.randrange(0, 500) for p in replicas})


def joined_group(
    nodes: int, processes: int, zones: int, partitions: int, standbys: int
) -> tuple[list[Member], dict[str, BackboneAssignor], dict[str, bytes], dict[str, Any]]:
    """Members settled in a previous generation, and their JoinGroup metadata (encoded as
    aiokafka sends it, decoded as the leader reads it)."""
    members = [Member(n, k, zones) for n in range(nodes) for k in range(processes)]
    previous_generation(members, partitions, standbys)
    assignors = {m.member_id: m.assignor(standbys) for m in members}
    join = {mid: a.metadata({TOPIC}).encode() for mid, a in assignors.items()}
    joined = {mid: ConsumerProtocol.METADATA.decode(data) for mid, data in join.items()}
    return members, assignors, join, joined


def leader_view(
    leader: BackboneAssignor, partitions: int, joined: dict[str, Any]
) -> tuple[dict[str, Any], RoutingView]:
    """The leader's assignment and the routing view it publishes (generation 7)."""
    published: list[RoutingView] = []
    leader.publish, leader.group_generation = published.append, lambda: 7
    result = leader.assign(Cluster(partitions), joined)
    return result, published[0]


def routing_view_bytes(
    members: int = 1_200, partitions: int = 3_600, standbys: int = 2, zones: int = 3
) -> int:
    """Bytes of the routing view (the record every node reads per rebalance) for
    ``members`` members, 3 per node, in ``zones`` zones."""
    processes = 3 if members % 3 == 0 else 1
    _, assignors, _, joined = joined_group(
        members // processes, processes, zones, partitions, standbys
    )
    _, view = leader_view(next(iter(assignors.values())), partitions, joined)
    return len(encode_view(view))


def sync_request(assignments: list[tuple[str, bytes]], leader: str) -> bytes:
    # static membership (group_instance_id), as the service's consumer runs
    request = SyncGroupRequest(GROUP, 7, leader, f"{GROUP}-node-000", assignments)
    return request.build(SyncGroupRequest_v3).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--zones", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3_600)
    parser.add_argument("--standbys", type=int, default=2)
    args = parser.parse_args()

    members, assignors, join, joined = joined_group(
        args.nodes, args.processes, args.zones, args.partitions, args.standbys
    )
    leader_id = members[0].member_id
    leader = assignors[leader_id]

    started = time.perf_counter()
    result, view = leader_view(leader, args.partitions, joined)
    assign_seconds = time.perf_counter() - started
    started = time.perf_counter()
    view_bytes = encode_view(view)
    view_encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    assert decode_view(view_bytes) == view
    view_decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    encoded = [(mid, a.encode()) for mid, a in result.items()]
    sync = sync_request(encoded, leader_id)
    encode_seconds = time.perf_counter() - started
    sizes = [len(data) for _, data in encoded]

    # What each member got: its own tasks, nothing else.
    plan_ = leader.last_plan
    assert plan_ is not None
    moved = 0
    by_id = {m.member_id: m for m in members}
    for mid, data in encoded:
        got = ConsumerProtocol.ASSIGNMENT.decode(data)
        assert [tp.partition for tp in got.partitions()] == plan_.actives[mid]
        assert decode_assignment(got.user_data).standbys == plan_.standbys[mid]
        moved += len(set(plan_.actives[mid]) - by_id[mid].active)

    # Naive: every member's user_data also carries the whole routing map.
    endpoint = {m.member_id: m.endpoint for m in members}
    routes: dict[int, list[Any]] = {p: ["", []] for p in range(args.partitions)}
    for mid, ps in plan_.actives.items():
        for p in ps:
            routes[p][0] = endpoint[mid]
    for mid, ps in plan_.standbys.items():
        for p in ps:
            routes[p][1].append(endpoint[mid])
    full_map = msgspec.Raw(msgspec.msgpack.encode(routes))
    naive_sizes = []
    for assignment in result.values():
        own = decode_assignment(assignment.user_data)
        user_data = msgspec.msgpack.encode({"s": own.standbys, "u": own.unmet, "m": full_map})
        naive = ConsumerProtocolMemberAssignment(
            assignment.version, assignment.assignment, user_data
        ).encode()
        naive_sizes.append(len(naive))
    # the SyncGroup request is the member entries concatenated: swap the assignment bytes
    naive_total = len(sync) - sum(sizes) + sum(naive_sizes)

    # Failover: one node (its processes) is lost; its partitions move, preferably to their
    # caught-up standbys.
    lost = {m.member_id for m in members if m.node == members[0].node}
    survivors = {mid: meta for mid, meta in joined.items() if mid not in lost}
    survivor = next(iter(survivors))
    started = time.perf_counter()
    assignors[survivor].assign(Cluster(args.partitions), survivors)
    failover_seconds = time.perf_counter() - started
    after = assignors[survivor].last_plan
    assert after is not None
    failover_moved = sum(len(set(after.actives[mid]) - by_id[mid].active) for mid in survivors)

    figures = {
        "members": len(members),
        "nodes": args.nodes,
        "zones": args.zones,
        "partitions": args.partitions,
        "standbys": args.standbys,
        "sync_total_bytes": len(sync),
        "per_member_mean_bytes": round(sum(sizes) / len(sizes), 1),
        "per_member_max_bytes": max(sizes),
        "assign_seconds": round(assign_seconds, 3),
        "sync_encode_seconds": round(encode_seconds, 3),
        "naive_sync_total_bytes": naive_total,
        "naive_per_member_mean_bytes": round(sum(naive_sizes) / len(naive_sizes), 1),
        "join_metadata_total_bytes": sum(len(data) for data in join.values()),
        "zone_conflicts": plan_.zone_conflicts,
        "missing_standbys": plan_.missing_standbys,
        "unmet": plan_.unmet,
        "moved_actives": moved,
        "failover_assign_seconds": round(failover_seconds, 3),
        "failover_moved_actives": failover_moved,
        "failover_zone_conflicts": after.zone_conflicts,
        "routing_view_bytes": len(view_bytes),
        "routing_view_raw_bytes": len(msgspec.msgpack.encode(view)),
        "routing_view_encode_seconds": round(view_encode_seconds, 3),
        "routing_view_decode_seconds": round(view_decode_seconds, 3),
        "targets_met": len(sync) <= MIB and assign_seconds < 2.0,
        **machine(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
