"""The routing view: who holds which partition in one group generation, as the leader planned it.

The group leader builds it from the plan it has just computed and publishes it to the
service's compacted routing topic, keyed by the consumer group's name; every node follows
that topic (``backbone.node.routing``). So a node reads one record per rebalance, whose
size grows with members + partitions, instead of describing the whole group.

Layout (msgpack arrays, then zlib): every member (node, zone, endpoint) once, and per
partition indexes into that list: its active, its standbys, and the members that reported
a store of it when they joined, with that store's changelog offset.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import msgspec

from backbone.assignment.planner import Plan
from backbone.assignment.protocol import MemberMetadata

VIEW_VERSION = 1
NO_MEMBER = -1
# Inflated size above which a record is refused: a view of 1,200 members and 3,600
# partitions is well under 1 MiB.
MAX_INFLATED_BYTES = 64 * 1024 * 1024


class RoutingViewError(ValueError):
    """A routing record that is not a readable view."""


class ViewMember(msgspec.Struct, array_like=True, frozen=True):
    node: str
    zone: str
    endpoint: str


class RoutingView(msgspec.Struct, array_like=True):
    """One group generation's routing; every list but ``members`` is indexed by partition."""

    version: int
    generation: int  # the Kafka group generation the leader assigned
    members: list[ViewMember]
    active: list[int]  # member index, or NO_MEMBER
    standbys: list[list[int]]  # member indexes
    holders: list[list[tuple[int, int]]]  # (member index, changelog offset) from join metadata
    unmet: list[str] = msgspec.field(default_factory=list)

    @property
    def partitions(self) -> int:
        return len(self.active)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RoutingView)


def build_view(
    generation: int, partitions: int, members: Mapping[str, MemberMetadata], plan: Plan
) -> RoutingView:
    """The view of ``plan`` over ``members`` (member id -> its join metadata)."""
    ids = sorted(members)
    index = {member_id: i for i, member_id in enumerate(ids)}
    listed = [ViewMember(members[m].node or m, members[m].zone, members[m].endpoint) for m in ids]
    active = [NO_MEMBER] * partitions
    standbys: list[list[int]] = [[] for _ in range(partitions)]
    holders: list[list[tuple[int, int]]] = [[] for _ in range(partitions)]
    for member_id, owned in plan.actives.items():
        for p in owned:
            active[p] = index[member_id]
    for member_id, copies in plan.standbys.items():
        for p in copies:
            standbys[p].append(index[member_id])
    for member_id in ids:
        for p, offset in sorted(members[member_id].offsets.items()):
            if 0 <= p < partitions:
                holders[p].append((index[member_id], offset))
    return RoutingView(VIEW_VERSION, generation, listed, active, standbys, holders, plan.unmet)


def encode_view(view: RoutingView) -> bytes:
    return zlib.compress(_encoder.encode(view), 6)


def decode_view(data: bytes | None) -> RoutingView:
    """The view in ``data``; RoutingViewError says what is wrong with a bad record."""
    if not data:
        raise RoutingViewError("empty routing record")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise RoutingViewError(f"routing record is not zlib data: {exc}") from exc
    if inflater.unconsumed_tail:
        raise RoutingViewError(f"routing record inflates past {MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise RoutingViewError("routing record is truncated")
    try:
        view = _decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise RoutingViewError(f"routing record is not a routing view: {exc}") from exc
    _check(view)
    return view


def _check(view: RoutingView) -> None:
    count = len(view.members)
    if view.version < 1:
        raise RoutingViewError(f"routing view has version {view.version}")
    if not len(view.active) == len(view.standbys) == len(view.holders):
        raise RoutingViewError(
            f"routing view lists {len(view.active)} actives, {len(view.standbys)} standby "
            f"lists and {len(view.holders)} holder lists: one of each per partition"
        )
    for p, member in enumerate(view.active):
        if not NO_MEMBER <= member < count:
            raise RoutingViewError(f"partition {p}: active {member} is not one of {count} members")
    for p, replicas in enumerate(view.standbys):
        if any(not 0 <= member < count for member in replicas):
            raise RoutingViewError(f"partition {p}: a standby is not one of {count} members")
    for p, held in enumerate(view.holders):
        if any(not 0 <= member < count for member, _ in held):
            raise RoutingViewError(f"partition {p}: a holder is not one of {count} members")
