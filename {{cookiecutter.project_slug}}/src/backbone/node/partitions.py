"""The partitions this node holds: the group's assignment turned into Partition objects,
and the stores on local disk that the group leader hears about."""

from __future__ import annotations

from typing import Any

import structlog

from backbone.node.partition import Partition, Ports, Role, State
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry

log = structlog.get_logger(__name__)


class PartitionSet:
    def __init__(self, ports: Ports, partitions: int) -> None:
        self.ports = ports
        self.count = partitions
        self.held: dict[int, Partition] = {}
        # Changelog offsets of closed stores on local disk, reported to the group leader so
        # that a partition moves preferably to a node that already has its state.
        self.known_offsets: dict[int, int] = {}

    @property
    def stores(self) -> StoreRegistry:
        return self.ports.stores

    def scan_disk(self) -> None:
        """Offsets of the stores found on disk at start (an unopenable one is quarantined)."""
        for p in range(self.count):
            if self.stores.path(p).exists():
                try:
                    self.known_offsets[p] = self.stores.open(p).meta().changelog_offset
                finally:
                    self.stores.close(p)

    # --- the group's decisions ------------------------------------------------------
    def revoke(self, partitions: set[int]) -> None:
        for p in partitions:
            held = self.held.get(p)
            if held is not None and held.role is Role.ACTIVE:
                self.held.pop(p).close()

    def assign(self, active: set[int], standby: set[int]) -> None:
        """The new group generation's tasks. A role that changes closes the old object; its store
        stays open for the new one, and stores this node holds no longer are closed."""
        for p, held in list(self.held.items()):
            wanted = Role.ACTIVE if p in active else Role.STANDBY if p in standby else None
            if held.role is not wanted:
                self.held.pop(p).close()
        for p in self.stores.partitions - active - standby:
            self._close_store(p)
        for role, numbers in ((Role.ACTIVE, active), (Role.STANDBY, standby)):
            for p in sorted(numbers):
                if p not in self.held:
                    partition = Partition(p, role, self.ports)
                    self.held[p] = partition
                    partition.start()

    def close_all(self) -> None:
        for p in list(self.held):
            self.held.pop(p).close()

    def _close_store(self, p: int) -> None:
        store = self.stores.get(p)
        if store is not None:
            self.known_offsets[p] = store.meta().changelog_offset
            self.stores.close(p)

    # --- reports from the node's parts ----------------------------------------------
    def superseded(self, p: int) -> None:
        if (held := self.held.get(p)) is not None:
            held.superseded()

    def changelog_gap(self, p: int) -> None:
        if (held := self.held.get(p)) is not None:
            held.changelog_gap()

    def caught_up(self, p: int) -> None:
        if (held := self.held.get(p)) is not None:
            held.caught_up()

    def accept_loss(self, p: int, node: str) -> dict[str, Any]:
        held = self.held.get(p)
        if held is None or held.role is not Role.ACTIVE:
            raise LookupError(f"partition {p} is not active on node {node}")
        try:
            return held.accept_loss()
        except LookupError as exc:
            raise LookupError(f"{exc}: it is not waiting for accept-loss on node {node}") from exc

    # --- what others read -----------------------------------------------------------
    def in_role(self, role: Role) -> set[int]:
        return {p for p, held in self.held.items() if held.role is role}

    def in_state(self, state: State) -> set[int]:
        return {p for p, held in self.held.items() if held.state is state}

    def serving(self, p: int) -> PartitionStore | None:
        """The store of a ready partition (an active that processes, or a standby that
        follows the changelog): what checkpoints and queries may read."""
        held = self.held.get(p)
        return self.stores.get(p) if held is not None and held.ready else None

    def replica(self, p: int, standby_too: bool) -> tuple[PartitionStore, Role] | None:
        """The store of a ready partition and this node's role for it; a standby only if
        ``standby_too``."""
        held = self.held.get(p)
        if held is None or not held.ready or (held.role is Role.STANDBY and not standby_too):
            return None
        store = self.stores.get(p)
        return None if store is None else (store, held.role)

    def active_store(self, p: int) -> PartitionStore | None:
        held = self.held.get(p)
        if held is None or held.role is not Role.ACTIVE or not held.ready:
            return None
        return self.stores.get(p)

    def local_offset(self, p: int) -> int | None:
        """The changelog offset of this node's store of ``p``, open or closed on disk."""
        store = self.stores.get(p)
        return store.meta().changelog_offset if store is not None else self.known_offsets.get(p)

    def all_active_ready(self) -> bool:
        return all(h.ready for h in self.held.values() if h.role is Role.ACTIVE)

    def failures(self) -> list[str]:
        return [h.failure for h in self.held.values() if h.failure is not None]

    def failure(self, p: int) -> str | None:
        """Why partition ``p`` of this node failed (it needs an operator), if it did."""
        held = self.held.get(p)
        return None if held is None else held.failure

    def incomplete(self) -> list[dict[str, Any]]:
        return [
            h.incomplete.as_dict()
            for h in self.held.values()
            if h.incomplete is not None and h.state is State.INCOMPLETE
        ]

    def rebuilds(self) -> list[dict[str, Any]]:
        """Actives rebuilt from their input since this node took them: under way or done."""
        return [h.rebuild.as_dict() for h in self.held.values() if h.rebuild is not None]

    def states(self) -> dict[str, str]:
        return {str(p): self.held[p].state.value for p in sorted(self.held)}

    def local_state(self) -> tuple[dict[int, int], frozenset[int], frozenset[int]]:
        """For the assignor: offsets of the stores on disk that hold a copy, actives and
        standbys. An empty store, or one known to have a gap, is no copy: reported, its
        offset could pass for caught up (within ACCEPTABLE_LAG of the best) and let the
        planner drop the last real copy."""
        offsets = dict(self.known_offsets)
        for p in self.stores.partitions:
            store = self.stores.get(p)
            if store is not None:
                offsets[p] = store.meta().changelog_offset
        gaps = self.in_state(State.INCOMPLETE) | self.in_state(State.WAITING)
        copies = {p: offset for p, offset in offsets.items() if offset > 0 and p not in gaps}
        return copies, frozenset(self.in_role(Role.ACTIVE)), frozenset(self.in_role(Role.STANDBY))
