"""The Kafka group assignor: aiokafka calls it, :func:`~backbone.assignment.planner.plan` decides.

aiokafka (0.14) uses the object passed in ``partition_assignment_strategy`` as is:

- ``metadata(topics)`` on every member before each JoinGroup: this member's node, zone,
  endpoint, the changelog offsets of its local stores and what it owned last group generation;
- ``assign(cluster, members)`` on the elected leader only, with every member's decoded
  ``ConsumerProtocolMemberMetadata``; its result is sent in one SyncGroup request, and the
  routing view of the plan (``backbone.assignment.view``) goes to ``publish``, which the
  node wires to its routing topic;
- ``on_assignment(assignment)`` on every member once SyncGroup answers, before the
  rebalance listener's ``on_partitions_assigned``: the standbys are read there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import msgspec
import structlog
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from backbone.assignment.planner import MemberInfo, Plan, plan
from backbone.assignment.protocol import (
    MemberMetadata,
    decode_assignment,
    decode_metadata,
    encode_assignment,
    encode_metadata,
)
from backbone.assignment.view import RoutingView, build_view

log = structlog.get_logger(__name__)

LocalState = Callable[[], tuple[Mapping[int, int], AbstractSet[int], AbstractSet[int]]]
Publish = Callable[[RoutingView], None]


class Cluster(Protocol):
    """What ``assign`` needs of aiokafka's ClusterMetadata."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class BackboneAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """One active and ``standby_replicas`` standbys per partition, zone-aware and sticky.

    ``local_state()`` returns (changelog offset of every store on local disk, partitions
    active here, partitions standby here). It is called at each join, after aiokafka has
    revoked the partitions, so the assignor adds what it received in the last group generation
    itself: a caller that empties its sets on revocation loses no stickiness.

    ``publish`` (none by default) receives the routing view of each plan, stamped with
    ``group_generation()``, the Kafka group generation being assigned. It must not block:
    ``assign`` is synchronous and runs inside aiokafka's join.
    """

    name = "backbone"
    version = 0

    def __init__(
        self,
        *,
        node: str,
        zone: str,
        endpoint: str,
        standby_replicas: int,
        local_state: LocalState,
        acceptable_lag: int = 10_000,
        publish: Publish | None = None,
        group_generation: Callable[[], int] = lambda: -1,
    ) -> None:
        if standby_replicas < 0:
            raise ValueError("standby_replicas must be >= 0")
        self.node = node
        self.zone = zone
        self.endpoint = endpoint
        self.standby_replicas = standby_replicas
        self.local_state = local_state
        self.acceptable_lag = acceptable_lag
        self.publish = publish
        self.group_generation = group_generation
        # This member's assignment in the current group generation (set by on_assignment).
        self.actives: frozenset[int] = frozenset()
        self.standbys: frozenset[int] = frozenset()
        self.unmet: list[str] = []
        # The leader's last plan (None on members that have not led a rebalance).
        self.last_plan: Plan | None = None

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        offsets, active, standby = self.local_state()
        actives = set(active) | self.actives
        standbys = (set(standby) | self.standbys) - actives
        user_data = encode_metadata(self.node, self.zone, self.endpoint, offsets, actives, standbys)
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: Cluster, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for m in members.values() for t in m.subscription})
        if not topics:
            return {}
        if len(topics) > 1:
            raise ValueError(f"the backbone assignor takes one topic, the group has {topics}")
        topic = topics[0]
        started = time.perf_counter()
        partitions = len(cluster.partitions_for_topic(topic) or ())  # numbered 0..n-1
        decoded = {mid: self._metadata(mid, meta) for mid, meta in members.items()}
        infos = [self._member_info(mid, data) for mid, data in decoded.items()]
        result = plan(infos, partitions, self.standby_replicas, self.acceptable_lag)
        self.last_plan = result
        if self.publish is not None:
            try:
                self.publish(build_view(self.group_generation(), partitions, decoded, result))
            except Exception as exc:  # the group's assignment must go out regardless
                log.warning("routing_view_not_published", error=str(exc))
        assignments: dict[str, ConsumerProtocolMemberAssignment] = {}
        for member_id in members:
            actives = result.actives[member_id]
            assignments[member_id] = ConsumerProtocolMemberAssignment(
                self.version,
                [ConsumerProtocolMemberAssignment.Assignment(topic, actives)] if actives else [],
                encode_assignment(result.standbys[member_id], result.unmet),
            )
        fields: dict[str, Any] = {
            "topic": topic,
            "members": len(infos),
            "nodes": len({i.node for i in infos}),
            "zones": len({i.zone for i in infos}),
            "partitions": partitions,
            "standby_replicas": self.standby_replicas,
            "handoffs": result.handoffs,
            "seconds": round(time.perf_counter() - started, 4),
        }
        if result.unmet:
            log.warning(
                "assignment_constraints_unmet",
                unmet=result.unmet,
                zone_conflicts=result.zone_conflicts,
                missing_standbys=result.missing_standbys,
                **fields,
            )
        else:
            log.info("assignment_planned", **fields)
        return assignments

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.actives = frozenset(tp.partition for tp in assignment.partitions())
        try:
            data = decode_assignment(assignment.user_data)
        except msgspec.DecodeError as exc:
            log.warning("assignment_user_data_unreadable", error=str(exc))
            data = decode_assignment(b"")
        self.standbys = frozenset(data.standbys) - self.actives
        self.unmet = list(data.unmet)

    @staticmethod
    def _metadata(member_id: str, meta: ConsumerProtocolMemberMetadata) -> MemberMetadata:
        try:
            return decode_metadata(meta.user_data)
        except msgspec.DecodeError as exc:
            log.warning("member_metadata_unreadable", member_id=member_id, error=str(exc))
            return MemberMetadata()

    @staticmethod
    def _member_info(member_id: str, data: MemberMetadata) -> MemberInfo:
        return MemberInfo(
            member_id=member_id,
            # A member that names no node shares it with nobody.
            node=data.node or member_id,
            zone=data.zone,
            offsets=data.offsets,
            active=frozenset(data.active),
            standby=frozenset(data.standby),
        )
