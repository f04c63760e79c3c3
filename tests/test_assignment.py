"""The group assignor: planner properties on random clusters, unmet lines, protocol bytes.

Invariant 4 (DESIGN.md): an active and its standbys are in different zones whenever the
members span enough zones; otherwise the assignment says which constraint it could not meet.
Assignment size: a member's assignment carries its own tasks only.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import msgspec
import pytest
from aiokafka.coordinator.protocol import (
    ConsumerProtocol,
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbone.assignment import (
    AssignmentData,
    BackboneAssignor,
    MemberInfo,
    MemberMetadata,
    Plan,
    decode_assignment,
    decode_metadata,
    encode_assignment,
    encode_metadata,
    plan,
)

LAG = 10_000
ZONES = ["za", "zb", "zc", "zd"]
EXAMPLES = int(os.environ.get("ASSIGNMENT_EXAMPLES", "150"))  # raise it to search harder
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------- random clusters


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[MemberInfo], int, int]:
    """1..30 members on 1..8 nodes in 1..4 zones, 1..64 partitions, 0..3 standbys.

    A node lives in one zone; previous owners and offsets are random (overlapping claims,
    stale stores and lagging replicas included).
    """
    zones = draw(st.integers(1, 4))
    nodes = draw(st.integers(1, 8))
    zone_of = [ZONES[draw(st.integers(0, zones - 1))] for _ in range(nodes)]
    partitions = draw(st.integers(1, 64))
    standbys = draw(st.integers(0, 3))
    count = draw(st.integers(1, 30))
    part = st.integers(0, partitions + 2)  # a few out of range: a shrunk topic
    members = []
    for k in range(count):
        node = draw(st.integers(0, nodes - 1))
        offsets = draw(st.dictionaries(part, st.integers(0, 50_000), max_size=8))
        members.append(
            MemberInfo(
                member_id=f"m{k:02d}-{draw(st.integers(0, 999)):03d}",
                node=f"n{node}",
                zone=zone_of[node],
                offsets=offsets,
                active=frozenset(draw(st.sets(part, max_size=6))),
                standby=frozenset(draw(st.sets(part, max_size=6))),
            )
        )
    unique = {m.member_id: m for m in members}
    return list(unique.values()), partitions, standbys


def owners(result: Plan) -> dict[int, str]:
    return {p: mid for mid, ps in result.actives.items() for p in ps}


def standbys_of(result: Plan) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for mid, ps in result.standbys.items():
        for p in ps:
            out.setdefault(p, []).append(mid)
    return out


def lag(members: Sequence[MemberInfo], member: MemberInfo, p: int) -> int | None:
    offsets = [m.offsets[p] for m in members if p in m.offsets]
    if p not in member.offsets:
        return None
    return max(offsets) - member.offsets[p]


def check(members: Sequence[MemberInfo], partitions: int, replicas: int, result: Plan) -> None:
    """Every property that holds of any single plan."""
    by_id = {m.member_id: m for m in members}
    assert set(result.actives) == set(by_id) == set(result.standbys)
    for lists in (result.actives, result.standbys):
        for ps in lists.values():
            assert ps == sorted(set(ps))
    # coverage: every partition exactly one active
    flat = [p for ps in result.actives.values() for p in ps]
    assert sorted(flat) == list(range(partitions))
    # balance
    counts = [len(ps) for ps in result.actives.values()]
    assert max(counts) - min(counts) <= 1
    owner = owners(result)
    sbs = standbys_of(result)
    zones_all = {m.zone for m in members}
    conflicts = 0
    missing = 0
    handoffs = 0
    for p in range(partitions):
        active = by_id[owner[p]]
        held = {m.member_id: m.offsets[p] for m in members if p in m.offsets}
        top = max(held.values(), default=0)

        def caught(mid: str) -> bool:
            return mid in held and top - held[mid] <= LAG  # noqa: B023

        standby_ids = list(sbs.get(p, []))
        # make before break: state that exists stays on a replica that is caught up
        if top > 0:
            assert any(caught(mid) for mid in [owner[p], *standby_ids]), (p, held)
        other_nodes = {m.node for m in members} - {active.node}
        if len(standby_ids) == min(replicas, len(other_nodes)) + 1:
            # the extra is the best holder, given only because no other replica caught up
            best = min((top - offset, mid) for mid, offset in held.items())[1]
            assert best in standby_ids
            standby_ids.remove(best)
            assert not any(caught(mid) for mid in [owner[p], *standby_ids])
            handoffs += 1
        replicas_p = [active] + [by_id[mid] for mid in standby_ids]
        # never on the active's member or node, never two replicas on one member or node
        assert len({r.member_id for r in replicas_p}) == len(replicas_p)
        assert len({r.node for r in replicas_p}) == len(replicas_p)
        zones = [r.zone for r in replicas_p]
        shared = len(set(zones)) < len(zones)
        conflicts += shared
        # zone spread whenever enough zones have eligible members (on other nodes)
        usable = {active.zone} | {m.zone for m in members if m.node != active.node}
        if len(usable) >= replicas + 1:
            assert not shared, (p, zones)
        # standby slots stay empty only for lack of nodes
        assert len(replicas_p) - 1 == min(replicas, len(other_nodes))
        missing += replicas - (len(replicas_p) - 1)
    assert result.zone_conflicts == conflicts
    assert result.handoffs == handoffs
    assert result.missing_standbys == missing
    if len(zones_all) >= replicas + 1:
        assert result.zone_conflicts == 0
    # unmet says why, in a few lines
    assert len(result.unmet) == len(set(result.unmet)) <= 5
    if conflicts:
        assert any(line.startswith("zone spread:") for line in result.unmet)
    if missing:
        assert any(line.startswith("standbys:") for line in result.unmet)
    if not conflicts and not missing and replicas and len(zones_all) >= replicas + 1:
        assert result.unmet == []


def holdings(members: Sequence[MemberInfo], p: int) -> dict[str, int]:
    return {m.member_id: m.offsets[p] for m in members if p in m.offsets}


def caught_up(members: Sequence[MemberInfo], p: int, mid: str) -> bool:
    held = holdings(members, p)
    return mid in held and max(held.values()) - held[mid] <= LAG


def without_extras(
    members: Sequence[MemberInfo], partitions: int, replicas: int, result: Plan
) -> dict[int, list[str]]:
    """The standbys of each partition without the make-before-break extra."""
    by_id = {m.member_id: m for m in members}
    owner = owners(result)
    regular = standbys_of(result)
    for p in range(partitions):
        ids = regular.setdefault(p, [])
        other_nodes = {m.node for m in members} - {by_id[owner[p]].node}
        if len(ids) == min(replicas, len(other_nodes)) + 1:
            held = holdings(members, p)
            top = max(held.values())
            ids.remove(min((top - offset, mid) for mid, offset in held.items())[1])
    return regular


def feed(members: Sequence[MemberInfo], result: Plan, offset: int = 1_000) -> list[MemberInfo]:
    """The next generation's members: the plan's tasks as previous, equal offsets for holders."""
    out = []
    for m in members:
        active = result.actives.get(m.member_id, [])
        standby = result.standbys.get(m.member_id, [])
        out.append(
            replace(
                m,
                offsets=dict.fromkeys([*active, *standby], offset),
                active=frozenset(active),
                standby=frozenset(standby),
            )
        )
    return out


# ---------------------------------------------------------------- properties


@PROPERTY
@given(clusters())
def test_plan_invariants(cluster: tuple[list[MemberInfo], int, int]) -> None:
    members, partitions, replicas = cluster
    check(members, partitions, replicas, plan(members, partitions, replicas, LAG))


@PROPERTY
@given(clusters())
def test_standbys_balanced_within_zones(cluster: tuple[list[MemberInfo], int, int]) -> None:
    members, partitions, replicas = cluster
    result = plan(members, partitions, replicas, LAG)
    by_id = {m.member_id: m for m in members}
    owner = owners(result)
    sbs = without_extras(members, partitions, replicas, result)
    load = dict.fromkeys(by_id, 0)
    for ids in sbs.values():
        for mid in ids:
            load[mid] += 1
    for p, ids in sbs.items():
        for mid in ids:
            x = by_id[mid]
            if caught_up(members, p, mid) and not any(
                caught_up(members, p, o) for o in [owner[p], *ids] if o != mid
            ):
                continue  # the last caught-up copy stays where it is (make before break)
            others = [by_id[owner[p]]] + [by_id[o] for o in sbs[p] if o != mid]
            nodes = {o.node for o in others}
            for y in members:
                # no member of the same zone, free to take p, has two standbys fewer
                if y.zone == x.zone and y.node not in nodes:
                    assert load[y.member_id] >= load[mid] - 1, (p, mid, y.member_id)


@PROPERTY
@given(clusters(), st.randoms(use_true_random=False))
def test_deterministic_under_member_order(
    cluster: tuple[list[MemberInfo], int, int], rng: random.Random
) -> None:
    members, partitions, replicas = cluster
    first = plan(members, partitions, replicas, LAG)
    shuffled = list(members)
    rng.shuffle(shuffled)
    assert plan(shuffled, partitions, replicas, LAG) == first


@PROPERTY
@given(clusters())
def test_sticky_nothing_moves_with_unchanged_membership(
    cluster: tuple[list[MemberInfo], int, int],
) -> None:
    members, partitions, replicas = cluster
    first = plan(members, partitions, replicas, LAG)
    second = plan(feed(members, first), partitions, replicas, LAG)
    # actives never move once balanced; nor do standbys, once every replica caught up
    # (a first plan may hold a last copy in place, or add an extra standby for it)
    assert second.actives == first.actives
    assert second.handoffs == 0
    third = plan(feed(members, second), partitions, replicas, LAG)
    assert third == second


@PROPERTY
@given(clusters())
def test_previous_active_kept_while_balance_allows(
    cluster: tuple[list[MemberInfo], int, int],
) -> None:
    members, partitions, replicas = cluster
    result = plan(members, partitions, replicas, LAG)
    q = partitions // len(members)
    claims = Counter(p for m in members for p in m.active if p < partitions)
    for m in members:
        mine = [p for p in m.active if p < partitions and claims[p] == 1]
        kept = set(result.actives[m.member_id]) & set(mine)
        # an uncontested previous active stays, up to the member's fair share
        assert len(kept) >= min(len(mine), q)


def check_caught_up_preference(members: Sequence[MemberInfo], result: Plan) -> None:
    """A partition that moves goes to a caught-up member unless none of them has room."""
    by_id = {m.member_id: m for m in members}
    load = {mid: len(ps) for mid, ps in result.actives.items()}
    for p, mid in owners(result).items():
        new = by_id[mid]
        if p in new.active:
            continue  # stayed where it was
        own_lag = lag(members, new, p)
        if own_lag is not None and own_lag <= LAG:
            continue
        # went to a member that is not caught up: every caught-up one was full
        for m in members:
            m_lag = lag(members, m, p)
            if m_lag is not None and m_lag <= LAG:
                assert load[m.member_id] >= load[mid], (p, m.member_id, mid)


@PROPERTY
@given(clusters())
def test_moved_partitions_prefer_caught_up_members(
    cluster: tuple[list[MemberInfo], int, int],
) -> None:
    members, partitions, replicas = cluster
    check_caught_up_preference(members, plan(members, partitions, replicas, LAG))


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[MemberInfo], list[tuple[str, int]], int, int, int]:
    """A starting group and a sequence of joins (on an old or new node) and leaves."""
    zones = draw(st.integers(1, 4))
    start = draw(st.integers(1, 12))
    members = []
    for k in range(start):
        node = draw(st.integers(0, 7))
        members.append(MemberInfo(f"m{k:03d}", f"n{node}", ZONES[node % zones]))
    events = draw(
        st.lists(st.tuples(st.sampled_from(["join", "leave"]), st.integers(0, 99)), max_size=8)
    )
    return members, events, zones, draw(st.integers(1, 64)), draw(st.integers(0, 3))


@PROPERTY
@given(histories())
def test_converges_as_members_come_and_go(
    history: tuple[list[MemberInfo], list[tuple[str, int]], int, int, int],
) -> None:
    members, events, zones, partitions, replicas = history
    result = plan(members, partitions, replicas, LAG)
    serial = len(members)
    for kind, pick in events:
        members = feed(members, result)
        if kind == "leave" and len(members) > 1:
            members.pop(pick % len(members))
        elif kind == "join":
            node = pick % 10
            members.append(MemberInfo(f"m{serial:03d}", f"n{node}", ZONES[node % zones]))
            serial += 1
        result = plan(members, partitions, replicas, LAG)
        check(members, partitions, replicas, result)
        check_caught_up_preference(members, result)  # a leaver's partitions: to standbys
    # membership stops changing: a fixed point within two more rounds
    rounds = [result]
    for _ in range(3):
        members = feed(members, rounds[-1])
        rounds.append(plan(members, partitions, replicas, LAG))
    fixed = [k for k in range(3) if rounds[k + 1] == rounds[k]]
    assert fixed and fixed[0] <= 2, "still moving three rounds after the last change"
    # (in fact the first or, after a handoff that kept a last copy, the second round)
    assert fixed[0] <= 1


# ---------------------------------------------------------------- examples


def group(spec: Sequence[tuple[str, str]]) -> list[MemberInfo]:
    """Members m0, m1, ... on the given (node, zone)s."""
    return [MemberInfo(f"m{k}", node, zone) for k, (node, zone) in enumerate(spec)]


def test_one_zone_says_so() -> None:
    members = group([("n0", "za"), ("n1", "za"), ("n2", "za")])
    result = plan(members, 30, 2)
    assert result.zone_conflicts == 30
    assert result.missing_standbys == 0
    assert result.unmet == [
        "zones: 1 zone for 3 replicas per partition",
        "zone spread: 30 partitions have replicas sharing a zone",
    ]


def test_two_zones_with_two_standbys_say_so() -> None:
    members = group([("n0", "za"), ("n1", "zb"), ("n2", "za"), ("n3", "zb")])
    result = plan(members, 12, 2)
    assert result.unmet[0] == "zones: 2 zones for 3 replicas per partition"
    assert result.zone_conflicts == 12
    by_id = {m.member_id: m for m in members}
    sbs = standbys_of(result)
    for p, mid in owners(result).items():
        # both zones used by every partition: only the second standby shares a zone
        zones = [by_id[mid].zone] + [by_id[s].zone for s in sbs[p]]
        assert sorted(set(zones)) == ["za", "zb"]
    # one standby per partition is enough for two zones
    assert plan(members, 12, 1).unmet == []


def test_too_few_members_say_so() -> None:
    members = group([("n0", "za"), ("n1", "zb")])
    result = plan(members, 8, 2)
    assert result.missing_standbys == 8
    assert "standbys: 2 members cannot hold 2 standbys per partition" in result.unmet
    assert "standbys: 8 standby slots left empty" in result.unmet
    assert "zones: 2 zones for 3 replicas per partition" in result.unmet
    assert all(len(ps) == 1 * 4 for ps in result.standbys.values())


def test_members_sharing_nodes_count_once() -> None:
    members = group([("n0", "za"), ("n0", "za"), ("n1", "zb"), ("n1", "zb")])
    result = plan(members, 8, 2)
    assert "standbys: 2 nodes cannot hold 2 standbys per partition" in result.unmet
    assert result.missing_standbys == 8


def test_unknown_zone_is_reported() -> None:
    members = group([("n0", ""), ("n1", "za"), ("n2", "zb")])
    assert plan(members, 6, 1).unmet == ["zones: 1 member of 3 report no zone"]


def test_unmet_lines_do_not_grow_with_partitions() -> None:
    members = group([("n0", "za"), ("n0", "za"), ("n1", "za")])
    result = plan(members, 5_000, 3)
    assert len(result.unmet) <= 5
    assert all(len(line) < 80 for line in result.unmet)


def test_no_members_or_no_partitions() -> None:
    assert plan([], 4, 1).unmet == ["members: no members for 4 partitions"]
    empty = plan(group([("n0", "za")]), 0, 2)
    assert empty.actives == {"m0": []} and empty.unmet == []
    with pytest.raises(ValueError, match="duplicate"):
        plan([*group([("n0", "za")]), *group([("n1", "zb")])], 4, 1)


def test_failed_active_goes_to_its_caught_up_standby() -> None:
    a, b, c = (MemberInfo(f"m{k}", f"n{k}", z) for k, z in enumerate(["za", "zb", "zc"]))
    actives = {"m0": [0, 1], "m1": [2, 3], "m2": [4, 5]}
    standbys = {"m0": [3, 4], "m1": [0, 5], "m2": [1, 2]}
    members = [
        replace(
            m,
            offsets=dict.fromkeys(actives[m.member_id] + standbys[m.member_id], 500),
            active=frozenset(actives[m.member_id]),
            standby=frozenset(standbys[m.member_id]),
        )
        for m in (a, b, c)
    ]
    survivors = members[1:]  # m0 fails: 0 -> its standby m1, 1 -> its standby m2
    result = plan(survivors, 6, 1)
    assert result.actives == {"m1": [0, 2, 3], "m2": [1, 4, 5]}
    # m1 lags too far behind on 0 while m2 holds it caught up: 0 goes to m2 instead
    lagging = [
        replace(survivors[0], offsets={**survivors[0].offsets, 0: 500 - LAG - 1}),
        replace(survivors[1], offsets={**survivors[1].offsets, 0: 500}),
    ]
    assert 0 in plan(lagging, 6, 1).actives["m2"]


@pytest.mark.parametrize("replicas", [0, 1, 2])
def test_a_sole_survivor_keeps_a_copy_of_everything_it_holds(replicas: int) -> None:
    """Two of three nodes lost their disks and rejoin empty: the survivor holds the only
    copy of every partition, so it stays a replica of each (active or standby, extra if
    need be) until the new replicas have caught up."""
    empty_a, empty_c = MemberInfo("m0", "n0", "za"), MemberInfo("m2", "n2", "zc")
    survivor = MemberInfo(
        "m1", "n1", "zb", offsets=dict.fromkeys(range(12), 800), active=frozenset(range(12))
    )
    members = [empty_a, survivor, empty_c]
    result = plan(members, 12, replicas)
    assert {len(ps) for ps in result.actives.values()} == {4}, "actives stay balanced"
    held = set(result.actives["m1"]) | set(result.standbys["m1"])
    assert held == set(range(12))
    regular = without_extras(members, 12, replicas, result)
    assert result.handoffs == sum("m1" not in regular[p] for p in result.standbys["m1"])
    # once the new replicas caught up, the survivor's extra copies go
    later = plan(feed(members, result), 12, replicas)
    assert later.handoffs == 0
    assert later.actives == result.actives


def test_large_group_is_balanced_and_sticky() -> None:
    """1,200 members, 3,600 partitions: its planning time is bench/assignment_plan.py's."""
    members = [
        MemberInfo(f"m-{n:03d}-{k}", f"node{n}", ZONES[n % 3]) for n in range(400) for k in range(3)
    ]
    first = plan(members, 3_600, 2)
    again = plan(feed(members, first), 3_600, 2)
    assert again == first
    assert first.zone_conflicts == first.missing_standbys == 0 and first.unmet == []
    assert {len(ps) for ps in first.actives.values()} == {3}


# ---------------------------------------------------------------- protocol


def test_metadata_round_trip() -> None:
    data = encode_metadata("n1", "za", "http://10.0.0.1:8000", {3: 42, 1: 7}, {1}, [3])
    meta = decode_metadata(data)
    assert meta == MemberMetadata(
        node="n1",
        zone="za",
        endpoint="http://10.0.0.1:8000",
        offsets={1: 7, 3: 42},
        active=[1],
        standby=[3],
    )
    assert decode_metadata(b"") == MemberMetadata()
    assert decode_metadata(b"").zone == ""
    # fields a newer member adds are ignored
    newer = msgspec.msgpack.encode({"v": 2, "n": "n2", "z": "zb", "x": [1, 2]})
    assert decode_metadata(newer).node == "n2"


def test_assignment_round_trip() -> None:
    data = encode_assignment([5, 2], ["zones: 1 zone for 2 replicas per partition"])
    assert decode_assignment(data) == AssignmentData(
        standbys=[2, 5], unmet=["zones: 1 zone for 2 replicas per partition"]
    )
    assert decode_assignment(b"") == AssignmentData()


# ---------------------------------------------------------------- assignor


class FakeCluster:
    def __init__(self, topic: str, partitions: int) -> None:
        self.topic, self.count = topic, partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.count)) if topic == self.topic else None


def make_assignors(n: int, standby_replicas: int = 1) -> dict[str, BackboneAssignor]:
    state: tuple[dict[int, int], frozenset[int], frozenset[int]] = ({}, frozenset(), frozenset())
    return {
        f"member-{k}": BackboneAssignor(
            node=f"node-{k}",
            zone=ZONES[k % 3],
            endpoint=f"http://10.0.0.{k}:8000",
            standby_replicas=standby_replicas,
            local_state=lambda: state,
        )
        for k in range(n)
    }


def rebalance(assignors: dict[str, BackboneAssignor], cluster: FakeCluster) -> dict[str, bytes]:
    """One JoinGroup + SyncGroup round as aiokafka's coordinator runs it; the first leads."""
    joined = {}
    for member_id, assignor in assignors.items():
        metadata = assignor.metadata({cluster.topic})
        joined[member_id] = ConsumerProtocol.METADATA.decode(metadata.encode())
    leader = next(iter(assignors.values()))
    assert leader.name == "backbone" and leader.version == 0
    sync = {mid: a.encode() for mid, a in leader.assign(cluster, joined).items()}
    for member_id, assignor in assignors.items():
        assignor.on_assignment(ConsumerProtocol.ASSIGNMENT.decode(sync[member_id]))
    return sync


def test_assignor_sends_each_member_its_own_tasks_only() -> None:
    assignors = make_assignors(6, standby_replicas=2)
    cluster = FakeCluster("svc.events", 12)
    sync = rebalance(assignors, cluster)
    leader_plan = next(iter(assignors.values())).last_plan
    assert leader_plan is not None and leader_plan.unmet == []
    for member_id, data in sync.items():
        decoded = ConsumerProtocolMemberAssignment.decode(data)
        own = leader_plan.actives[member_id]
        assert [tp.partition for tp in decoded.partitions()] == own
        assert decode_assignment(decoded.user_data).standbys == leader_plan.standbys[member_id]
        # nothing about the others: no endpoint, no node, and a size bounded by own tasks
        assert b"http" not in data and b"node-" not in data
        tasks = len(own) + len(leader_plan.standbys[member_id])
        assert len(data) <= 32 + 4 * tasks + len("svc.events")
        assignor = assignors[member_id]
        assert assignor.actives == frozenset(own)
        assert assignor.standbys == frozenset(leader_plan.standbys[member_id])
        assert assignor.unmet == []


def test_assignor_stays_sticky_when_local_state_was_revoked() -> None:
    # local_state reports nothing (aiokafka revokes every partition before rejoining): the
    # assignor still reports what it received last generation, so nothing moves.
    assignors = make_assignors(4)
    cluster = FakeCluster("svc.events", 10)
    first = rebalance(assignors, cluster)
    assert rebalance(assignors, cluster) == first
    meta = decode_metadata(assignors["member-0"].metadata(["svc.events"]).user_data)
    assert meta.active == sorted(assignors["member-0"].actives)
    assert meta.node == "node-0" and meta.endpoint == "http://10.0.0.0:8000"


def test_assignor_reports_unmet_constraints() -> None:
    assignors = make_assignors(2, standby_replicas=2)
    rebalance(assignors, FakeCluster("svc.events", 4))
    for assignor in assignors.values():
        assert "standbys: 2 members cannot hold 2 standbys per partition" in assignor.unmet


def test_assignor_tolerates_members_without_metadata() -> None:
    assignors = make_assignors(2)
    leader = assignors["member-0"]
    members = {
        "member-0": ConsumerProtocol.METADATA.decode(leader.metadata(["t"]).encode()),
        "other": ConsumerProtocolMemberMetadata(0, ["t"], b""),
    }
    result = leader.assign(FakeCluster("t", 4), members)
    assert sorted(p for a in result.values() for tp in a.partitions() for p in [tp.partition]) == [
        0,
        1,
        2,
        3,
    ]
    with pytest.raises(ValueError, match="one topic"):
        leader.assign(
            FakeCluster("t", 4), {"x": ConsumerProtocolMemberMetadata(0, ["t", "u"], b"")}
        )
