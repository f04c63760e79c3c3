"""Who holds which partition, learned from the consumer group's description.

Each member's assignment carries only its own tasks, so the group's assignment messages grow
with each member's tasks, not with members x partitions. The routing map every node needs
for queries is rebuilt from DescribeGroups, which lists every member's metadata (node,
zone, endpoint) and assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient

from backbone.assignment.protocol import decode_member

log = structlog.get_logger(__name__)

# Routes change with rebalances, which trigger a refresh; so does a forward that misses.
# The periodic refresh is a safety net only: DescribeGroups grows with the group.
REFRESH_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Replica:
    node: str
    zone: str
    endpoint: str


@dataclass(slots=True)
class Routes:
    group_state: str = ""
    active: dict[int, Replica] = field(default_factory=dict)
    standbys: dict[int, list[Replica]] = field(default_factory=dict)
    # Every member's stores on disk as it reported them when it joined: (member, offset).
    holders: dict[int, list[tuple[Replica, int]]] = field(default_factory=dict)
    unmet: list[str] = field(default_factory=list)

    def zone_conflicts(self) -> list[int]:
        """Partitions whose replicas share a zone."""
        conflicts = []
        for partition, active in self.active.items():
            zones = [active.zone, *(r.zone for r in self.standbys.get(partition, []))]
            if len(set(zones)) < len(zones):
                conflicts.append(partition)
        return sorted(conflicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.group_state,
            "unmet": self.unmet,
            "zone_conflicts": self.zone_conflicts(),
            "partitions": {
                str(p): {
                    "active": {"node": a.node, "zone": a.zone, "endpoint": a.endpoint},
                    "standbys": [
                        {"node": r.node, "zone": r.zone, "endpoint": r.endpoint}
                        for r in self.standbys.get(p, [])
                    ],
                }
                for p, a in sorted(self.active.items())
            },
        }


class RoutingTable:
    def __init__(self, bootstrap: str, group: str) -> None:
        self.group = group
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.routes = Routes()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._admin.start()
        self._task = asyncio.create_task(self._run(), name="routing")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._admin.close()

    def refresh_soon(self) -> None:
        self._wake.set()

    def owner(self, partition: int) -> Replica | None:
        return self.routes.active.get(partition)

    async def refresh(self) -> None:
        responses = await self._admin.describe_consumer_groups([self.group])
        routes = Routes()
        for response in responses:
            for group in response.to_object()["groups"]:
                routes.group_state = group["state"]
                for member in group["members"]:
                    meta, actives, standbys, unmet = decode_member(
                        member["member_metadata"], member["member_assignment"]
                    )
                    replica = Replica(meta.node, meta.zone, meta.endpoint)
                    for p, offset in meta.offsets.items():
                        routes.holders.setdefault(p, []).append((replica, offset))
                    for p in actives:
                        routes.active[p] = replica
                    for p in standbys:
                        routes.standbys.setdefault(p, []).append(replica)
                    routes.unmet = list(unmet) or routes.unmet
        self.routes = routes

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("routing_refresh_failed", error=str(exc))
            self._wake.clear()
            # Mid-rebalance the description is incomplete: look again shortly.
            pause = REFRESH_EVERY_S if self.routes.group_state == "Stable" else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
