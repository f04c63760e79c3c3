"""Queries as a distributed database: a key is answered by this node's replica, or by the
replica the routing view names (the owner for ``active``, the nearest holder for ``any``),
many keys are fanned out by holder in parallel, and writes are submitted to the events
topic with the position a read-your-writes GET can present."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace

from backbone.domain import Event
from backbone.node.positions import Position
from backbone.node.reads import (
    ACTIVE,
    ANSWER_HEADERS,
    ANY,
    Answer,
    LocalReads,
    NotReachedError,
    UnavailableError,
)
from backbone.node.routing import Replica, RoutingTable
from backbone.observability import tracing_on
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier
from backbone.repartition.gate import WriteGate

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.node.queries")

FORWARDED_HEADER = "x-backbone-forwarded-by"


class BatchReply(msgspec.Struct):
    items: dict[str, msgspec.Raw] = {}
    missing: list[str] = []
    failed: dict[str, str] = {}


class Queries(Generic[A]):
    def __init__(
        self,
        local: LocalReads[A],
        routing: RoutingTable,
        http: aiohttp.ClientSession,
        zone: str,
        internal_url: str,
        token: str,
    ) -> None:
        self.local = local
        self.routing = routing
        self.http = http
        self.zone = zone
        self.internal_url = internal_url
        self.auth = {"authorization": f"Bearer {token}", FORWARDED_HEADER: local.node_id}

    def replicas(self, partition: int, consistency: str) -> list[Replica]:
        """Other nodes to ask: the owner; for ``any`` every holder, nearest first."""
        routes = self.routing.routes
        active = routes.active.get(partition)
        ranked: list[tuple[int, int, Replica]] = []
        if active is not None:
            ranked.append((0 if active.zone == self.zone else 2, 1, active))
        if consistency == ANY:
            for replica in routes.standbys.get(partition, []):
                ranked.append((0 if replica.zone == self.zone else 2, 0, replica))
        ordered = [r for *_, r in sorted(ranked, key=lambda t: t[:2])]
        return [r for r in ordered if r.endpoint and r.endpoint != self.internal_url]

    async def read(
        self,
        aggregate_id: str,
        consistency: str,
        position: Position | None,
        deadline: float,
        forward: bool,
    ) -> Answer:
        """Raises ValueError (bad request), UnavailableError, NotReachedError."""
        local = self.local
        local.check(aggregate_id, position)
        if position is not None and position.generation > local.generation.number:
            raise UnavailableError(
                f"position {position} is of generation {position.generation}; this node is "
                f"still at generation {local.generation.number}"
            )
        answer = await local.read(aggregate_id, consistency, position, deadline)
        if answer is not None:
            return answer
        if forward:
            answer = await self._forward(aggregate_id, consistency, position, deadline)
            if answer is not None:
                return answer
        answer = local.read_frozen(aggregate_id, position)
        if answer is not None:
            return answer
        partition = local.partition_of(aggregate_id)
        failure = local.partitions.failure(partition)
        if failure is not None:  # waiting would not help: say what will
            raise UnavailableError(
                f"{failure}; /health/ready lists every partition that failed", retry=False
            )
        role = "active" if consistency == ACTIVE else "ready"
        raise UnavailableError(
            f"partition {partition} is not {role} on this node, and no other node that holds "
            "it answered (it is moving, or a rebalance is under way)"
        )

    async def _forward(
        self, aggregate_id: str, consistency: str, position: Position | None, deadline: float
    ) -> Answer | None:
        loop = asyncio.get_running_loop()
        params = {"consistency": consistency}
        if position is not None:
            params["position"] = str(position)
        path = f"/internal/aggregates/{quote(aggregate_id, safe='')}"
        for replica in self.replicas(self.local.partition_of(aggregate_id), consistency):
            timeout = aiohttp.ClientTimeout(total=max(deadline - loop.time(), 0) + 2.0)
            try:
                async with self.http.get(
                    replica.endpoint + path, params=params, headers=self.auth, timeout=timeout
                ) as response:
                    status, body = response.status, await response.read()
                    headers = {k: v for k in ANSWER_HEADERS if (v := response.headers.get(k))}
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("forward_failed", to=replica.endpoint, error=str(exc) or repr(exc))
                continue
            if status in (200, 404):
                return Answer(status, body, headers)
            if status == 504:
                raise NotReachedError(_detail(body, "the position was not reached in time"))
            if status == 400:
                raise ValueError(_detail(body, "refused"))
        return None

    async def batch_get(self, ids: list[str], consistency: str, forward: bool) -> BatchReply:
        """Every id's value, or why not; the ids held elsewhere are asked of their holders,
        one request per node, all at once."""
        found, missing, elsewhere = self.local.read_many(ids, consistency)
        reply = BatchReply(found, missing, {})
        if not elsewhere:
            return reply
        if not forward:
            node = self.local.node_id
            reply.failed = {i: f"its partition is not held on {node}" for i in elsewhere}
            return reply
        by_node: dict[str, list[str]] = {}
        for aggregate_id in elsewhere:
            replicas = self.replicas(self.local.partition_of(aggregate_id), consistency)
            if not replicas:
                reply.failed[aggregate_id] = "no node is known to hold its partition: retry"
                continue
            by_node.setdefault(replicas[0].endpoint, []).append(aggregate_id)
        answers = await asyncio.gather(
            *(self._batch_from(url, wanted, consistency) for url, wanted in by_node.items())
        )
        for answer in answers:
            reply.items.update(answer.items)
            reply.missing.extend(answer.missing)
            reply.failed.update(answer.failed)
        return reply

    async def _batch_from(self, url: str, ids: list[str], consistency: str) -> BatchReply:
        try:
            async with self.http.post(
                f"{url}/internal/aggregates:batchGet",
                data=msgspec.json.encode({"ids": ids, "consistency": consistency}),
                headers={**self.auth, "content-type": "application/json"},
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}: {body[:200]!r}")
            return msgspec.json.decode(body, type=BatchReply)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return BatchReply(failed={i: reason for i in ids})

    async def page(
        self, partition: int, after: str | None, limit: int, forward: bool
    ) -> dict[str, Any]:
        try:
            return self.local.page(partition, after, limit)
        except UnavailableError:
            if not forward:
                raise
        for replica in self.replicas(partition, ANY):
            params: dict[str, Any] = {"limit": limit}
            if after is not None:
                params["after"] = after
            try:
                async with self.http.get(
                    f"{replica.endpoint}/internal/partitions/{partition}/aggregates",
                    params=params,
                    headers=self.auth,
                ) as response:
                    if response.status == 200:
                        return dict(msgspec.json.decode(await response.read()))
            except (aiohttp.ClientError, TimeoutError):
                continue
        raise UnavailableError(f"no node that holds partition {partition} answered: retry")


def _detail(body: bytes, otherwise: str) -> str:
    """The ``detail`` of a peer's JSON error answer."""
    try:
        return str(msgspec.json.decode(body).get("detail", otherwise))
    except (msgspec.DecodeError, AttributeError):
        return otherwise


# Told each acknowledged write's gate and its seconds from submission (backbone.http.metrics).
on_write: list[Callable[[WriteGate, float], None]] = []


async def submit_event(
    applier: BatchApplier[A],
    gate: WriteGate,
    producer: AIOKafkaProducer,
    aggregate_id: str,
    event: Event,
) -> Position:
    """Produce ``event`` for ``aggregate_id`` to the generation's input that the write gate
    names; returns its position once acked. WritesPausedError while it is paused."""
    started = time.perf_counter()
    value, headers = applier.events.encode(event)
    key = aggregate_id.encode()
    traced = tracing_on()
    async with gate.writing() as target:
        partition = partition_for(key, target.partitions)
        span = (
            tracer.start_as_current_span(
                f"send {target.topic}",
                kind=trace.SpanKind.PRODUCER,
                attributes={"messaging.destination.partition.id": str(partition)},
            )
            if traced
            else contextlib.nullcontext()
        )
        with span:
            if traced:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                headers.extend((k, v.encode()) for k, v in carrier.items())
            metadata = await producer.send_and_wait(
                target.topic, value, key=key, partition=partition, headers=headers
            )
            log.debug(  # per write: info would cost the POST path a rendered line each
                "event_accepted",
                aggregate_id=aggregate_id,
                partition=metadata.partition,
                offset=metadata.offset,
            )
    for hook in on_write:
        hook(gate, time.perf_counter() - started)
    return Position(target.generation, metadata.partition, metadata.offset)
