"""Who is active and who is standby for each partition: pure, deterministic, no I/O.

Modelled on Kafka Streams' HighAvailabilityTaskAssignor (actives balanced, sticky, moved
preferably to a member whose local state is caught up) and ClientTagAwareStandbyTaskAssignor
(standbys spread over zones, least loaded first), simplified to one store per partition.

Actives. Every member gets ``q = P // M`` or ``q + 1`` actives, exactly ``P % M`` of them
the larger count. A member keeps its previous actives up to that capacity; the ``q + 1``
slots go first to members that held more than ``q``. Partitions left without an owner go to
a caught-up member with room (lowest load first), then to a member holding some of their
state (lowest lag first), then to the least loaded member.

Standbys. For each partition, every replica is on its own node. Previous standbys (and
caught-up holders of the state) are kept while they are in a zone the partition does not use
yet. The remaining slots are filled from per-zone heaps keyed by (standby load, member): the
least loaded member of a zone the partition does not use yet; failing that, a sticky holder in
a used zone; failing that, the least loaded member on another node (a zone conflict); failing
that, the slot stays empty. Then standbys move from a member to one with at least two fewer
(in the same zone, or in a zone the partition does not use) until no such move is left.

Make before break. Balancing never moves a standby away from a partition whose other
replicas are not caught up, and a partition none of whose replicas is caught up (all its
state is on a member that lost it in this plan, such as a survivor of a double failure
handing partitions to empty nodes) keeps its best holder as an extra standby. The new
replicas copy the state from it; a later plan drops the extra once one of them caught up.

Determinism: members are ordered by ``member_id`` and every tie is broken by it, so the
input order never matters. Convergence: with the previous plan fed back, every capacity and
every choice is reproduced, so a stable group stays where it is.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_NO_LAG = 1 << 62  # the lag of a member that holds no state for a partition


@dataclass(frozen=True)
class MemberInfo:
    member_id: str
    node: str  # host; several members (processes) may share a node
    zone: str  # "" = unknown
    offsets: Mapping[int, int] = field(default_factory=dict)  # changelog offset per local store
    active: frozenset[int] = frozenset()  # actives in the previous group generation
    standby: frozenset[int] = frozenset()  # standbys in the previous group generation


@dataclass(frozen=True)
class Plan:
    actives: dict[str, list[int]]  # every member_id present, sorted partition lists
    standbys: dict[str, list[int]]
    unmet: list[str]  # short, deduplicated lines: the constraints given up
    zone_conflicts: int  # partitions whose replicas (active + standbys) share a zone
    missing_standbys: int  # standby slots that could not be placed
    # Partitions given an extra standby: their only caught-up copy, kept until a new
    # replica has caught up (make before break).
    handoffs: int = 0


def plan(
    members: Sequence[MemberInfo],
    partitions: int,
    standby_replicas: int,
    acceptable_lag: int = 10_000,
) -> Plan:
    """The assignment of ``partitions`` partitions over ``members``; see the module doc."""
    if partitions < 0 or standby_replicas < 0:
        raise ValueError("partitions and standby_replicas must be >= 0")
    ordered = sorted(members, key=lambda m: m.member_id)
    for a, b in itertools.pairwise(ordered):
        if a.member_id == b.member_id:
            raise ValueError(f"duplicate member_id {a.member_id!r}")
    if not ordered:
        unmet = [f"members: no members for {partitions} partitions"] if partitions else []
        return Plan({}, {}, unmet, 0, 0)
    state = _State(ordered, partitions, acceptable_lag)
    owner = _assign_actives(state)
    standbys = _assign_standbys(state, owner, standby_replicas)
    extras = _keep_last_copies(state, owner, standbys)

    ids = [m.member_id for m in ordered]
    actives_out: dict[str, list[int]] = {mid: [] for mid in ids}
    standbys_out: dict[str, list[int]] = {mid: [] for mid in ids}
    zone_conflicts = 0
    missing = 0
    for p in range(partitions):  # ascending, so every list comes out sorted
        actives_out[ids[owner[p]]].append(p)
        zones = [state.zone[owner[p]]]
        for i in standbys[p]:
            standbys_out[ids[i]].append(p)
            zones.append(state.zone[i])
        if len(set(zones)) < len(zones):
            zone_conflicts += 1
        missing += standby_replicas - len(standbys[p])
    for p, i in extras.items():
        standbys_out[ids[i]].append(p)
        standbys_out[ids[i]].sort()
    unmet = _explain(state, partitions, standby_replicas, zone_conflicts, missing)
    return Plan(actives_out, standbys_out, unmet, zone_conflicts, missing, len(extras))


class _State:
    """Members by index (their rank by member_id) and who holds state for which partition."""

    def __init__(self, ordered: list[MemberInfo], partitions: int, acceptable_lag: int) -> None:
        self.members = ordered
        self.count = len(ordered)
        self.partitions = partitions
        self.node = [m.node for m in ordered]
        self.zone = [m.zone for m in ordered]
        # holders[p]: members reporting a local store for p, with their offset
        self.holders: dict[int, list[tuple[int, int]]] = {}
        for i, m in enumerate(ordered):
            for p, offset in m.offsets.items():
                if 0 <= p < partitions:
                    self.holders.setdefault(p, []).append((i, offset))
        self.lag: dict[int, dict[int, int]] = {}
        for p, held in self.holders.items():
            top = max(offset for _, offset in held)
            self.lag[p] = {i: top - offset for i, offset in held}
        self.acceptable_lag = acceptable_lag

    def lag_of(self, i: int, p: int) -> int:
        return self.lag.get(p, {}).get(i, _NO_LAG)

    def caught_up(self, i: int, p: int) -> bool:
        return self.lag_of(i, p) <= self.acceptable_lag


# ---------------------------------------------------------------- actives


def _assign_actives(s: _State) -> list[int]:
    count, partitions = s.count, s.partitions
    q, r = divmod(partitions, count)

    # Previous owners; a partition claimed by two members (a zombie) goes to the most
    # caught-up claimant.
    claims: dict[int, list[int]] = {}
    for i, m in enumerate(s.members):
        for p in m.active:
            if 0 <= p < partitions:
                claims.setdefault(p, []).append(i)
    previous: list[list[int]] = [[] for _ in range(count)]
    for p, claimants in claims.items():
        best = min(claimants, key=lambda i: (s.lag_of(i, p), i))
        previous[best].append(p)

    # The r slots of q + 1 go first to members that held more than q; the rest float.
    over = sorted(
        (i for i in range(count) if len(previous[i]) > q), key=lambda i: (-len(previous[i]), i)
    )
    reserved = [False] * count
    for i in over[:r]:
        reserved[i] = True
    floating = r - min(r, len(over))
    cap = [q + 1 if reserved[i] else q for i in range(count)]

    owner = [-1] * partitions
    load = [0] * count
    for i in range(count):
        held = previous[i]
        if len(held) > cap[i]:
            # Keep the partitions nobody else claims, then those nobody else could take over
            # without restoring.
            ranked = sorted((len(claims[p]) > 1, _other_caught_up(s, p, i), p) for p in held)
            held = [p for *_, p in ranked[: cap[i]]]
        for p in held:
            owner[p] = i
        load[i] = len(held)

    def can_take(i: int) -> bool:
        return load[i] < cap[i] or (not reserved[i] and load[i] == q and floating > 0)

    def take(i: int, p: int) -> None:
        nonlocal floating
        if load[i] >= cap[i]:
            floating -= 1
        owner[p] = i
        load[i] += 1

    orphans = [p for p in range(partitions) if owner[p] < 0]
    # Pass 1: to a caught-up member; partitions with the fewest such members choose first.
    caught: dict[int, list[int]] = {}
    for p in orphans:
        caught[p] = [i for i, _ in s.holders.get(p, ()) if s.caught_up(i, p)]
    rest: list[int] = []
    for p in sorted(orphans, key=lambda p: (len(caught[p]) or partitions + count, p)):
        room = [i for i in caught[p] if can_take(i)]
        if room:
            take(min((load[i], s.lag_of(i, p), i) for i in room)[2], p)
        else:
            rest.append(p)
    # Pass 2: to the member holding the most of its state, else to the least loaded one.
    heap = [(load[i], i) for i in range(count) if can_take(i)]
    heapq.heapify(heap)
    for p in sorted(rest):
        room = [i for i, _ in s.holders.get(p, ()) if can_take(i)]
        if room:
            i = min((s.lag_of(j, p), load[j], j) for j in room)[2]
        else:
            while True:  # total capacity == partitions, so someone has room
                entry_load, i = heapq.heappop(heap)
                if entry_load == load[i] and can_take(i):
                    break
        take(i, p)
        if can_take(i):
            heapq.heappush(heap, (load[i], i))
    return owner


def _other_caught_up(s: _State, p: int, i: int) -> bool:
    return any(j != i and s.caught_up(j, p) for j, _ in s.holders.get(p, ()))


# ---------------------------------------------------------------- standbys


class _ZoneHeaps:
    """Members by (standby load, index) per zone, and zones by their least loaded member.

    Lazy invalidation: an entry is live while its load equals the member's current load.
    """

    def __init__(self, s: _State) -> None:
        self.load = [0] * s.count
        self.zone = s.zone
        self.node = s.node
        self.by_zone: dict[str, list[tuple[int, int]]] = {}
        for i in range(s.count):
            self.by_zone.setdefault(s.zone[i], []).append((0, i))
        self.zones = sorted(self.by_zone)
        self.tops: list[tuple[int, int, str]] = []
        self.live: dict[str, tuple[int, int] | None] = {}
        for z in self.zones:
            heapq.heapify(self.by_zone[z])
            self._push_top(z)

    def _top(self, z: str) -> tuple[int, int] | None:
        heap = self.by_zone[z]
        while heap and heap[0][0] != self.load[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _push_top(self, z: str) -> None:
        top = self._top(z)
        if top is not None and top != self.live.get(z):  # one entry per live top
            heapq.heappush(self.tops, (top[0], top[1], z))
        self.live[z] = top

    def change(self, i: int, delta: int) -> None:
        self.load[i] += delta
        z = self.zone[i]
        heapq.heappush(self.by_zone[z], (self.load[i], i))
        self._push_top(z)

    def _best_in_zone(self, z: str, nodes: set[str]) -> int | None:
        """The least loaded member of ``z`` on none of ``nodes``; the heap is left intact."""
        heap = self.by_zone[z]
        skipped: list[tuple[int, int]] = []
        found: int | None = None
        while heap:
            entry = heapq.heappop(heap)
            if entry[0] != self.load[entry[1]] or entry in skipped:
                continue
            skipped.append(entry)
            if self.node[entry[1]] not in nodes:
                found = entry[1]
                break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found

    def best_new_zone(self, zones: set[str], nodes: set[str]) -> int | None:
        """The least loaded member in a zone not in ``zones``, on a node not in ``nodes``."""
        skipped: list[tuple[int, int, str]] = []
        found: int | None = None
        while self.tops:
            entry = heapq.heappop(self.tops)
            load, i, z = entry
            if self._top(z) != (load, i) or entry in skipped:
                continue  # stale (the zone's live top has an entry of its own) or a twin
            skipped.append(entry)
            if z in zones:
                continue
            found = self._best_in_zone(z, nodes)
            if found is not None:
                break
        for entry in skipped:
            heapq.heappush(self.tops, entry)
        return found

    def best_any(self, nodes: set[str]) -> int | None:
        """The least loaded member on a node not in ``nodes``, whatever its zone."""
        best: int | None = None
        for z in self.zones:
            i = self._best_in_zone(z, nodes)
            if i is not None and (best is None or (self.load[i], i) < (self.load[best], best)):
                best = i
        return best


def _assign_standbys(s: _State, owner: list[int], replicas: int) -> list[list[int]]:
    """Keep, fill, then balance; see the module doc."""
    partitions, count = s.partitions, s.count
    standbys: list[list[int]] = [[] for _ in range(partitions)]
    if replicas == 0 or partitions == 0:
        return standbys
    node, zone = s.node, s.zone
    heaps = _ZoneHeaps(s)
    load = heaps.load
    held: list[set[int]] = [set() for _ in range(count)]  # standbys per member

    previous: dict[int, list[int]] = {}
    for i, m in enumerate(s.members):
        for p in m.standby:
            if 0 <= p < partitions:
                previous.setdefault(p, []).append(i)

    def sticky(p: int) -> list[int]:
        """Previous standbys and caught-up holders of ``p`` (not its active), best first."""
        cands = set(previous.get(p, ()))
        cands.update(i for i, _ in s.holders.get(p, ()) if s.caught_up(i, p))
        cands.discard(owner[p])
        return sorted(cands, key=lambda i: (s.lag_of(i, p), i))

    def used(p: int, but: int = -1) -> tuple[set[str], set[str]]:
        """Nodes and zones of the replicas of ``p`` (except member ``but``)."""
        others = [owner[p], *(i for i in standbys[p] if i != but)]
        return {node[i] for i in others}, {zone[i] for i in others}

    def place(p: int, i: int) -> None:
        standbys[p].append(i)
        held[i].add(p)
        heaps.change(i, 1)

    def last_copy(p: int, i: int) -> bool:
        """Whether ``i`` is the only caught-up replica of ``p`` (make before break)."""
        if not s.caught_up(i, p):
            return False
        return not any(s.caught_up(j, p) for j in (owner[p], *standbys[p]) if j != i)

    # Keep: sticky members on a new node in a new zone.
    candidates: list[list[int]] = []
    for p in range(partitions):
        cands = sticky(p)
        candidates.append(cands)
        for i in cands:
            if len(standbys[p]) >= replicas:
                break
            nodes, zones = used(p)
            if node[i] not in nodes and zone[i] not in zones:
                place(p, i)

    # Fill: least loaded in a new zone; else sticky in a used zone; else least loaded anywhere.
    for p in range(partitions):
        while len(standbys[p]) < replicas:
            nodes, zones = used(p)
            pick = heaps.best_new_zone(zones, nodes)
            if pick is None:
                pick = next((c for c in candidates[p] if node[c] not in nodes), None)
            if pick is None:
                pick = heaps.best_any(nodes)
            if pick is None:
                break
            place(p, pick)

    # Balance: move a standby to a member with at least two fewer, in its own zone or in a
    # zone the partition does not use, until no such move is left (a fixed point: fed back,
    # keep and fill reproduce this plan and no move applies). Every move lowers the sum of
    # squared loads, so this ends.
    moved = True
    while moved:
        moved = False
        floor = min(load)
        for x in sorted(range(count), key=lambda i: (-load[i], i)):
            for p in sorted(held[x]):
                if load[x] - 2 < floor:
                    break
                if last_copy(p, x):
                    continue
                nodes, zones = used(p, but=x)
                zones.discard(zone[x])
                y = heaps.best_new_zone(zones, nodes)
                if y is None or load[y] > load[x] - 2:
                    continue
                standbys[p][standbys[p].index(x)] = y
                held[x].discard(p)
                held[y].add(p)
                heaps.change(x, -1)
                heaps.change(y, 1)
                moved = True
    for p in range(partitions):
        standbys[p].sort()
    return standbys


def _keep_last_copies(s: _State, owner: list[int], standbys: list[list[int]]) -> dict[int, int]:
    """Make before break: a partition none of whose replicas is caught up keeps its best
    holder as an extra standby, so the state it holds is served to the new replicas instead
    of being dropped (until a later plan finds a replica caught up). Returns the extras,
    partition -> member, kept out of the zone and standby counts."""
    extras: dict[int, int] = {}
    for p, held in s.holders.items():
        if max(offset for _, offset in held) <= 0:
            continue  # only empty stores: nothing to keep
        if any(s.caught_up(i, p) for i in (owner[p], *standbys[p])):
            continue
        extras[p] = min((s.lag_of(i, p), i) for i, _ in held)[1]
    return extras


# ---------------------------------------------------------------- unmet


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _explain(s: _State, partitions: int, replicas: int, conflicts: int, missing: int) -> list[str]:
    unmet: list[str] = []
    if replicas == 0 or partitions == 0:
        return unmet
    zones = len(set(s.zone))
    unknown = sum(1 for z in s.zone if not z)
    if unknown:
        unmet.append(f"zones: {_plural(unknown, 'member')} of {s.count} report no zone")
    if zones < replicas + 1:
        unmet.append(f"zones: {_plural(zones, 'zone')} for {replicas + 1} replicas per partition")
    if conflicts:
        unmet.append(f"zone spread: {_plural(conflicts, 'partition')} have replicas sharing a zone")
    if missing:
        few = s.count < replicas + 1  # else too few nodes: one node holds one replica
        short = _plural(s.count, "member") if few else _plural(len(set(s.node)), "node")
        unmet.append(f"standbys: {short} cannot hold {_plural(replicas, 'standby')} per partition")
        unmet.append(f"standbys: {_plural(missing, 'standby slot')} left empty")
    return list(dict.fromkeys(unmet))
