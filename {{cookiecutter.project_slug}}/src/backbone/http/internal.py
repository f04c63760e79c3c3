"""The internal API, on its own port: checkpoints for peers, forwarded queries, liveness.

A checkpoint holds every customer's data of a partition, so it needs the shared token
(compared in constant time) and, when configured, mutual TLS on this listener. The port
serves its guarded routes and nothing else (no OpenAPI schema or docs). A reader that
stops reading is cut off after ``CHECKPOINT_SEND_TIMEOUT_S``, so it cannot hold a stream
slot that other peers need.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter
from litestar.response import Stream
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_409_CONFLICT,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from backbone.http.metrics import own_metrics
from backbone.http.public import own_health
from backbone.http.reads import (
    RETRY,
    batch_request,
    batch_response,
    checked_id,
    read_answer,
)
from backbone.node.engine import Engine
from backbone.node.peer_watch import HEALTH_PATH, REJOIN_PATH, rejoin_from
from backbone.node.queries import FORWARDED_HEADER
from backbone.node.reads import UnavailableError
from backbone.observability import log_refusals
from backbone.snapshot import stream_checkpoint
from backbone.snapshot.bootstrap import COPY_HEADER, OFFSET_HEADER

log = structlog.get_logger(__name__)


def _token_guard(expected: str) -> Any:
    # async: Litestar runs a plain function guard in a worker thread, per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        header = connection.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise NotAuthorizedException("send 'Authorization: Bearer <INTERNAL_TOKEN>'")
        if not expected:
            raise PermissionDeniedException(
                "this node has no INTERNAL_TOKEN set, so it serves no checkpoints"
            )
        if not hmac.compare_digest(header[7:].encode(), expected.encode()):
            raise PermissionDeniedException("wrong internal token")

    return guard


_CLEANUP = "backbone.cleanup"


class ReaderStalledError(TimeoutError):
    """The client accepted no bytes for longer than the send timeout."""


def _send_deadline(timeout_s: float) -> Callable[[ASGIApp], ASGIApp]:
    """Fail a response whose client stops reading, and run the route's cleanups (release
    its stream slot, remove its checkpoint) however the response ended."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            cleanups: list[Callable[[], Any]] = []
            scope[_CLEANUP] = cleanups  # type: ignore[literal-required]

            async def timed_send(message: Message) -> None:
                try:
                    async with asyncio.timeout(timeout_s):
                        await send(message)
                except TimeoutError:
                    raise ReaderStalledError(
                        f"the client read nothing for {timeout_s:g}s: connection dropped"
                    ) from None

            try:
                await app(scope, receive, timed_send)
            finally:
                for cleanup in reversed(cleanups):
                    await cleanup()

        return wrapped

    return middleware


def internal_app(engine: Engine[Any]) -> Litestar:
    streams = asyncio.Semaphore(engine.settings.max_checkpoint_streams)
    workdir = engine.settings.data_dir / "checkpoints"
    guard = [_token_guard(engine.settings.internal_token)]

    @get(
        "/internal/partitions/{partition:int}/checkpoint",
        guards=guard,
        middleware=[_send_deadline(engine.settings.checkpoint_send_timeout_s)],
    )
    async def checkpoint(
        partition: Annotated[int, Parameter()],
        scope: Scope,
        generation: Annotated[int, Parameter()] = 0,
    ) -> Stream:
        if generation != engine.generation.number:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"this node is at generation {engine.generation.number}, not {generation}: "
                "the partition count is changing, retry shortly",
            )
        store = engine.held_store(partition)
        if store is None:
            usable = await engine.holds_usable_copy(partition)
            raise NotFoundException(
                f"partition {partition} is not held on this node",
                headers={COPY_HEADER: "usable" if usable else "none"},
            )
        if streams.locked():
            raise HTTPException(
                status_code=HTTP_429_TOO_MANY_REQUESTS,
                detail="too many checkpoints streaming from this node: try another peer",
            )
        await streams.acquire()
        held = True
        started = time.monotonic()

        async def release() -> None:
            nonlocal held
            if held:
                held = False
                streams.release()

        scope[_CLEANUP].append(release)  # type: ignore[literal-required]
        workdir.mkdir(parents=True, exist_ok=True)
        manifest, chunks = await stream_checkpoint(store, workdir)
        scope[_CLEANUP].append(chunks.aclose)  # type: ignore[literal-required]
        log.info(
            "checkpoint_serving",
            partition=partition,
            changelog_offset=manifest.changelog_offset,
            files=len(manifest.files),
            total_bytes=manifest.total_bytes(),
            checkpoint_s=round(time.monotonic() - started, 3),
        )

        async def body() -> AsyncIterator[bytes]:
            complete = False
            try:
                async for chunk in chunks:
                    yield chunk
                complete = True
            finally:
                await chunks.aclose()
                await release()
                log.info(
                    "checkpoint_served",
                    partition=partition,
                    complete=complete,
                    seconds=round(time.monotonic() - started, 3),
                )

        return Stream(
            body(),
            media_type="application/x-tar",
            headers={
                OFFSET_HEADER: str(manifest.changelog_offset),
                "content-length": str(chunks.size),
            },
        )

    @get("/internal/aggregates/{aggregate_id:str}", guards=guard)
    async def aggregate(aggregate_id: Annotated[str, Parameter()], scope: Scope) -> ASGIApp:
        """A key from this node's replica (forwarded here by a peer, or asked by an
        operator): it is not forwarded further. Query options as the public read's."""
        return await read_answer(engine, checked_id(aggregate_id, scope), scope, forward=False)

    @post("/internal/aggregates:batchGet", guards=guard, status_code=HTTP_200_OK)
    async def batch_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        """The ids this node holds a replica of; the others are reported failed."""
        batch = batch_request(engine, await request.body())
        return Response(await batch_response(engine, batch, False), media_type="application/json")

    @get("/internal/partitions/{partition:int}/aggregates", guards=guard)
    async def scan(
        partition: Annotated[int, Parameter()],
        request: Request[Any, Any, Any],
        after: Annotated[str | None, Parameter()] = None,
        limit: Annotated[int, Parameter()] = 100,
    ) -> dict[str, Any]:
        """A page of one partition's aggregates in key order, from the first key above
        ``after``; ``next`` is the ``after`` of the next page (null at the end)."""
        if not 1 <= limit <= 1000:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST, detail="limit must be between 1 and 1000"
            )
        if not 0 <= partition < engine.generation.partitions:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST,
                detail=f"partition must be between 0 and {engine.generation.partitions - 1}",
            )
        forward = not request.headers.get(FORWARDED_HEADER)
        try:
            return await engine.queries.page(partition, after, limit, forward)
        except UnavailableError as exc:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers=RETRY
            ) from exc

    @post(
        "/internal/partitions/{partition:int}/accept-loss",
        guards=guard,
        status_code=HTTP_200_OK,
    )
    async def accept_loss(partition: Annotated[int, Parameter()]) -> dict[str, Any]:
        """An operator accepts that an incomplete partition's deleted history is gone."""
        try:
            return engine.accept_loss(partition)
        except LookupError as exc:
            raise HTTPException(status_code=HTTP_409_CONFLICT, detail=str(exc)) from exc

    @get(HEALTH_PATH)
    async def health() -> dict[str, Any]:
        """For peers' liveness probes (``backbone.node.peer_watch``): no token, as it tells
        no data, only whom this node cannot reach."""
        parts = engine.parts
        return {"suspects": [] if parts is None else parts.watch.suspects()}

    @get("/internal/metrics", guards=guard, media_type=CONTENT_TYPE_PLAIN_0_0_4)
    async def metrics() -> bytes:
        """This worker's metrics, for the other workers of its node (``backbone.workers``)."""
        body = own_metrics(engine)
        if body is None:
            raise NotFoundException("this node serves no metrics (METRICS=off)")
        return body

    @get("/internal/worker-health", guards=guard)
    async def worker_health() -> dict[str, Any]:
        """This worker's health, for the other workers of its node (``backbone.workers``)."""
        return own_health(engine)

    @post(REJOIN_PATH, guards=guard, status_code=HTTP_200_OK)
    async def rejoin(generation: Annotated[int, Parameter()]) -> dict[str, bool]:
        """A peer left group generation ``generation``, or was removed: join again now."""
        parts = engine.parts
        return {"rejoining": parts is not None and rejoin_from(parts.clients.consumer, generation)}

    @get("/internal/repartition", guards=guard)
    async def repartition() -> dict[str, Any]:
        """The generation in force, the change under way: its step, progress and blocks."""
        return engine.repartition_status()

    return Litestar(
        route_handlers=[
            checkpoint,
            aggregate,
            batch_get,
            scan,
            accept_loss,
            repartition,
            health,
            metrics,
            worker_health,
            rejoin,
        ],
        openapi_config=None,  # no /schema: this port serves its guarded routes only
        logging_config=None,
        before_send=[log_refusals],
    )
