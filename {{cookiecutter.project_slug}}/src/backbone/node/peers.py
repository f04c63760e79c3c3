"""Where a partition's copies are, as the leader's routing view tells."""

from __future__ import annotations

from backbone.node.routing import Replica, RoutingTable


class GroupPeers:
    """Peers learned from the routing table (the group leader's latest routing view)."""

    def __init__(self, routing: RoutingTable, zone: str, self_url: str) -> None:
        self.routing = routing
        self.zone = zone
        self.self_url = self_url

    async def refresh(self) -> None:
        await self.routing.refresh()

    def sources(self, partition: int) -> list[str]:
        """Same zone first, then standbys before the active."""
        routes = self.routing.routes
        standbys = routes.standbys.get(partition, [])
        active = routes.active.get(partition)
        candidates: list[tuple[int, int, Replica]] = [
            (0 if r.zone == self.zone else 1, 0, r) for r in standbys
        ]
        if active is not None:
            candidates.append((0 if active.zone == self.zone else 1, 1, active))
        ordered = [r.endpoint for _, _, r in sorted(candidates, key=lambda c: c[:2])]
        # A member seen mid-rebalance may not have told its endpoint yet.
        return [url for url in dict.fromkeys(ordered) if url and url != self.self_url]

    def holds_copy(self, partition: int, changelog_begin: int, ruled_out: set[str]) -> bool:
        """Offsets are as of the member's last join: a replica that reported state then
        has followed the changelog since; any other store is complete only if the
        changelog still reaches back to it."""
        routes = self.routing.routes
        replicas = {r.endpoint for r in routes.standbys.get(partition, [])}
        if (active := routes.active.get(partition)) is not None:
            replicas.add(active.endpoint)
        return any(
            replica.endpoint != self.self_url
            and replica.endpoint not in ruled_out
            and offset > 0
            and (replica.endpoint in replicas or offset >= changelog_begin)
            for replica, offset in routes.holders.get(partition, [])
        )
