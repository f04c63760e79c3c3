"""Who holds which partition, learned from the routing topic.

The group leader publishes the routing view of each assignment it computes
(``backbone.assignment.view``) to ``<service>.routing``, a compacted topic of one partition,
keyed by the consumer group's name. Every node follows that topic with a consumer of its
own (no group) and keeps the latest view of its group: one record per rebalance, whatever
the size of the group. A view of an older group generation than the one held is ignored
(a late write of a former leader), except a group's first generation (the group was
created again) and a tombstone, which forgets the view.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from backbone.assignment.view import (
    NO_MEMBER,
    RoutingView,
    RoutingViewError,
    decode_view,
    encode_view,
)
from backbone.kafka_connection import KafkaConnection

log = structlog.get_logger(__name__)

REFRESH_DEADLINE_S = 10.0
RETRY_S = 2.0
FIRST_GENERATION = 1  # the first generation of a Kafka consumer group
MAX_VIEW_BYTES = 8 * 1024 * 1024


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
    generation: int = -1  # the group generation of the view, -1 without one

    @classmethod
    def of(cls, view: RoutingView) -> Routes:
        replicas = [Replica(m.node, m.zone, m.endpoint) for m in view.members]
        return cls(
            active={p: replicas[m] for p, m in enumerate(view.active) if m != NO_MEMBER},
            standbys={p: [replicas[m] for m in ms] for p, ms in enumerate(view.standbys) if ms},
            holders={
                p: [(replicas[m], offset) for m, offset in held]
                for p, held in enumerate(view.holders)
                if held
            },
            unmet=list(view.unmet),
            generation=view.generation,
        )

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
            "generation": self.generation,
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
    """Follows ``topic`` for the views of ``group``.

    ``local_generation`` returns the group generation this node's consumer has joined
    (-1 while it has none): the routes are "Stable" when the view is of that generation,
    "Rebalancing" otherwise. Without it (an admin command, outside a node) the latest view
    is taken as it is.

    ``rejoin`` is called once per group generation whose view does not list
    ``self_endpoint``: a static member that restarted with another endpoint got its
    assignment back without a rebalance, so no view names its new endpoint until it
    rejoins with its new metadata."""

    def __init__(
        self,
        kafka: KafkaConnection,
        group: str,
        topic: str,
        local_generation: Callable[[], int] | None = None,
        self_endpoint: str = "",
        rejoin: Callable[[], None] | None = None,
    ) -> None:
        self.group = group
        self.topic = topic
        self._key = group.encode()
        self._tp = TopicPartition(topic, 0)
        self._local_generation = local_generation
        self._self_endpoint = self_endpoint
        self._rejoin = rejoin
        self._rejoined_at = -1
        self._consumer = AIOKafkaConsumer(
            **kafka.kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_VIEW_BYTES,
            fetch_max_bytes=4 * MAX_VIEW_BYTES,
        )
        self._routes = Routes()
        self._view: RoutingView | None = None
        self._assigned = False
        self._position = 0
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def routes(self) -> Routes:
        routes = self._routes
        routes.group_state = self._state()
        return routes

    def _state(self) -> str:
        if self._view is None:
            return "Unknown"
        if self._local_generation is None:
            return "Stable"
        return "Stable" if self._local_generation() == self._view.generation else "Rebalancing"

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="routing")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The follower's loop, once started (``/health/live`` watches it)."""
        return self._task

    @property
    def members(self) -> list[Replica]:
        """Every member of the latest view, holding partitions or not."""
        view = self._view
        return [] if view is None else [Replica(m.node, m.zone, m.endpoint) for m in view.members]

    def owner(self, partition: int) -> Replica | None:
        return self._routes.active.get(partition)

    async def refresh(self, deadline_s: float = REFRESH_DEADLINE_S) -> None:
        """Return once the follower has read the routing topic up to its current end;
        TimeoutError after ``deadline_s``. Without a routing topic yet, there is nothing
        to read."""
        if not await self._assign():
            return
        end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        while True:
            self._progress.clear()
            if self._position >= end:
                return
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                raise TimeoutError(
                    f"the routing topic {self.topic} was read up to offset {self._position}, "
                    f"not to its end {end}, within {deadline_s} s"
                ) from None

    async def _assign(self) -> bool:
        # another caller may have assigned it while the topics were listed
        if (
            not self._assigned
            and self.topic in await self._consumer.topics()
            and not self._assigned
        ):
            self._consumer.assign([self._tp])
            self._assigned = True
        return self._assigned

    async def _run(self) -> None:
        while True:
            try:
                if not await self._assign():
                    await asyncio.sleep(RETRY_S)  # created with the service's topics
                    continue
                batches = await self._consumer.getmany(self._tp, timeout_ms=1000)
                for record in batches.get(self._tp, []):
                    self._apply(record)
                self._position = await self._consumer.position(self._tp)
                self._progress.set()
                self._check_listed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routing_follow_failed", topic=self.topic, error=str(exc))
                await asyncio.sleep(RETRY_S)

    def _check_listed(self) -> None:
        view = self._view
        if view is None or self._rejoin is None or self._local_generation is None:
            return
        generation = self._local_generation()
        if generation != view.generation or generation == self._rejoined_at:
            return
        if any(m.endpoint == self._self_endpoint for m in view.members):
            return
        self._rejoined_at = generation
        log.warning(
            "routing_view_without_this_node",
            group=self.group,
            generation=generation,
            endpoint=self._self_endpoint,
            detail="this node rejoins the group so that the leader publishes its endpoint",
        )
        self._rejoin()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key != self._key:
            return  # another generation's group
        if record.value is None:  # a tombstone: forget the view, take the next one
            self._view, self._routes = None, Routes()
            return
        try:
            view = decode_view(record.value)
        except RoutingViewError as exc:
            log.warning(
                "routing_view_unreadable", topic=self.topic, offset=record.offset, error=str(exc)
            )
            return
        held = self._view
        if (
            held is not None
            and view.generation < held.generation
            and view.generation != FIRST_GENERATION
        ):
            log.info(
                "routing_view_stale",
                group=self.group,
                generation=view.generation,
                held=held.generation,
            )
            return
        self._view, self._routes = view, Routes.of(view)


class ViewPublisher:
    """The leader's side: sends each routing view to the routing topic, keyed by the group.

    Called from the synchronous ``assign``: the send runs as a task of the running loop."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, group: str) -> None:
        self.producer = producer
        self.topic = topic
        self.group = group
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, view: RoutingView) -> None:
        task = asyncio.get_running_loop().create_task(self._send(view), name="routing-publish")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, view: RoutingView) -> None:
        data = encode_view(view)
        try:
            await self.producer.send_and_wait(
                self.topic, data, key=self.group.encode(), partition=0
            )
        except Exception as exc:
            log.error(
                "routing_view_publish_failed",
                group=self.group,
                generation=view.generation,
                error=str(exc),
            )
            return
        log.info(
            "routing_view_published",
            group=self.group,
            generation=view.generation,
            members=len(view.members),
            partitions=view.partitions,
            bytes=len(data),
        )

    async def wait(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._sending)
