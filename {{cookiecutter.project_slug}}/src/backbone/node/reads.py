"""Reads this node answers from its own replicas: one key (waiting for a position when the
request names one), many keys, or a page of a partition.

Every answer says who served it: the node, its role (active or standby), the partition,
the generation and the changelog offset its store had applied; a standby adds its lag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from backbone.changelog.reader import ChangelogReader
from backbone.node.partition import Role
from backbone.node.partitions import PartitionSet
from backbone.node.positions import Position, reflects
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier
from backbone.repartition.frozen import FrozenStores
from backbone.repartition.plan import Generation, Plan
from backbone.store import PartitionStore

A = TypeVar("A", bound=msgspec.Struct)

ACTIVE = "active"
ANY = "any"
CONSISTENCY = (ACTIVE, ANY)

SERVED_BY = "x-backbone-served-by"
ROLE = "x-backbone-role"
PARTITION = "x-backbone-partition"
GENERATION = "x-backbone-generation"
OFFSET = "x-backbone-offset"
LAG = "x-backbone-lag"
ANSWER_HEADERS = (SERVED_BY, ROLE, PARTITION, GENERATION, OFFSET, LAG)
# The previous generation's store, read between a switch and the new parts' first answer.
PREVIOUS = "previous-generation"


class UnavailableError(RuntimeError):
    """No replica can answer now (moving, restoring, unknown owner): retry shortly (503).
    ``retry`` False: not before an operator acts, as the message says."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class NotReachedError(TimeoutError):
    """The replica did not apply the position before the deadline (504)."""


@dataclass(slots=True)
class Answer:
    status: int  # 200, or 404 for a key that has no value
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def not_found(store: str, aggregate_id: str) -> bytes:
    return msgspec.json.encode({"status_code": 404, "detail": f"no {store} {aggregate_id!r}"})


class LocalReads(Generic[A]):
    def __init__(
        self,
        applier: BatchApplier[A],
        partitions: PartitionSet,
        reader: ChangelogReader,
        generation: Generation,
        node_id: str,
        store_name: str,
        previous: Callable[[], Plan | None],
        frozen: Callable[[], FrozenStores | None],
    ) -> None:
        self.applier = applier
        self.partitions = partitions
        self.reader = reader
        self.generation = generation
        self.node_id = node_id
        self.store_name = store_name
        self.previous = previous
        self.frozen = frozen

    def partition_of(self, aggregate_id: str) -> int:
        return partition_for(aggregate_id.encode(), self.generation.partitions)

    def check(self, aggregate_id: str, position: Position | None) -> None:
        """ValueError when a position of this generation names another partition."""
        if position is None or position.generation != self.generation.number:
            return
        partition = self.partition_of(aggregate_id)
        if position.partition != partition:
            raise ValueError(
                f"position {position} is in partition {position.partition}, but "
                f"{aggregate_id!r} is in partition {partition}: present the position its "
                "own write was given"
            )

    async def read(
        self, aggregate_id: str, consistency: str, position: Position | None, deadline: float
    ) -> Answer | None:
        """The key from this node's replica, once it reflects ``position``; None when this
        node holds no replica of the key's partition in a role ``consistency`` allows."""
        key = aggregate_id.encode()
        partition = self.partition_of(aggregate_id)
        loop = asyncio.get_running_loop()
        pause = 0.001
        while True:
            held = self.partitions.replica(partition, consistency == ANY)
            if held is None:
                return None
            store, role = held
            raw = store.get(key)
            if position is None or self._reflects(position, store, role, raw):
                return self._answer(aggregate_id, partition, store, role, raw)
            if loop.time() >= deadline:
                raise NotReachedError(
                    f"the {role.value} replica of partition {partition} on {self.node_id} has "
                    f"not applied position {position} yet: retry, or read with "
                    "consistency=active"
                )
            await asyncio.sleep(min(pause, max(deadline - loop.time(), 0)))
            pause = min(pause * 2, 0.005)

    def _reflects(
        self, position: Position, store: PartitionStore, role: Role, raw: bytes | None
    ) -> bool:
        fences = None
        if raw is not None:
            fence, late, _ = self.applier.aggregates.decode_fenced(raw)
            fences = (fence, late)
        applied = store.meta().input_offset if role is Role.ACTIVE else None
        return reflects(position, self.generation.number, self.previous(), fences, applied)

    def _answer(
        self,
        aggregate_id: str,
        partition: int,
        store: PartitionStore,
        role: Role,
        raw: bytes | None,
    ) -> Answer:
        headers = {
            SERVED_BY: self.node_id,
            ROLE: role.value,
            PARTITION: str(partition),
            GENERATION: str(self.generation.number),
            OFFSET: str(store.changelog_offset()),
        }
        if role is Role.STANDBY:
            lag = self.reader.standby_lag().get(partition)
            headers[LAG] = "" if lag is None else str(lag)
        if raw is None:
            return Answer(404, not_found(self.store_name, aggregate_id), headers)
        _, aggregate = self.applier.aggregates.decode(raw)
        return Answer(200, self.applier.aggregates.to_json(aggregate), headers)

    def read_frozen(self, aggregate_id: str, position: Position | None) -> Answer | None:
        """Right after a switch, when no replica of the new generation answers yet: the
        previous generation's store here, which holds every write below the barrier."""
        frozen, previous = self.frozen(), self.previous()
        if frozen is None or previous is None:
            return None
        if position is not None:
            barrier = previous.barrier or {}
            if position.generation != previous.source.number or position.offset >= barrier.get(
                position.partition, 0
            ):
                return None
        held, raw = frozen.lookup(aggregate_id.encode())
        if not held:
            return None
        headers = {
            SERVED_BY: self.node_id,
            ROLE: PREVIOUS,
            PARTITION: str(partition_for(aggregate_id.encode(), frozen.partitions)),
            GENERATION: str(previous.source.number),
        }
        if raw is None:
            return Answer(404, not_found(self.store_name, aggregate_id), headers)
        _, aggregate = self.applier.aggregates.decode(raw)
        return Answer(200, self.applier.aggregates.to_json(aggregate), headers)

    def read_many(
        self, ids: list[str], consistency: str
    ) -> tuple[dict[str, msgspec.Raw], list[str], list[str]]:
        """(found, missing, not held here) for ``ids``."""
        found: dict[str, msgspec.Raw] = {}
        missing: list[str] = []
        elsewhere: list[str] = []
        by_partition: dict[int, list[str]] = {}
        for aggregate_id in ids:
            by_partition.setdefault(self.partition_of(aggregate_id), []).append(aggregate_id)
        aggregates = self.applier.aggregates
        for partition, wanted in by_partition.items():
            held = self.partitions.replica(partition, consistency == ANY)
            if held is None:
                elsewhere.extend(wanted)
                continue
            values = held[0].get_many([i.encode() for i in wanted])
            for aggregate_id, raw in zip(wanted, values, strict=True):
                if raw is None:
                    missing.append(aggregate_id)
                else:
                    found[aggregate_id] = msgspec.Raw(aggregates.to_json(aggregates.decode(raw)[1]))
        return found, missing, elsewhere

    def page(self, partition: int, after: str | None, limit: int) -> dict[str, Any]:
        """A page of one partition held here (active or standby), in key order."""
        held = self.partitions.replica(partition, True)
        if held is None:
            raise UnavailableError(f"partition {partition} is not held on {self.node_id}")
        store, role = held
        aggregates = self.applier.aggregates
        rows = store.page(None if after is None else after.encode(), limit)
        items = [
            {
                "id": key.decode(),
                "value": msgspec.Raw(aggregates.to_json(aggregates.decode(raw)[1])),
            }
            for key, raw in rows
        ]
        return {
            "partition": partition,
            "generation": self.generation.number,
            "node": self.node_id,
            "role": role.value,
            "changelog_offset": store.changelog_offset(),
            "items": items,
            "next": items[-1]["id"] if len(items) == limit else None,
        }
