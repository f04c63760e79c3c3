"""The internal API, on its own port: checkpoints for peers and forwarded queries.

A checkpoint holds every customer's data of a partition, so it needs the shared token
(compared in constant time) and, when configured, mutual TLS on this listener.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from litestar import Litestar, Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Stream
from litestar.status_codes import HTTP_429_TOO_MANY_REQUESTS, HTTP_503_SERVICE_UNAVAILABLE

from backbone.bootstrap import OFFSET_HEADER
from backbone.runtime import Engine, NotOwnedError
from backbone.snapshot import stream_checkpoint

log = structlog.get_logger(__name__)


def _token_guard(expected: str) -> Any:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
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


def internal_app(engine: Engine[Any]) -> Litestar:
    streams = asyncio.Semaphore(engine.settings.max_checkpoint_streams)
    workdir = engine.settings.data_dir / "checkpoints"

    @get(
        "/internal/partitions/{partition:int}/checkpoint",
        guards=[_token_guard(engine.settings.internal_token)],
    )
    async def checkpoint(partition: int) -> Stream:
        store = engine.held_store(partition)
        if store is None:
            raise NotFoundException(f"partition {partition} is not held on this node")
        if streams.locked():
            raise HTTPException(
                status_code=HTTP_429_TOO_MANY_REQUESTS,
                detail="too many checkpoints streaming from this node: try another peer",
            )
        await streams.acquire()
        started = time.monotonic()
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            manifest, chunks = await stream_checkpoint(store, workdir)
        except BaseException:
            streams.release()
            raise
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
                streams.release()
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

    @get(
        "/internal/aggregates/{aggregate_id:str}",
        guards=[_token_guard(engine.settings.internal_token)],
    )
    async def aggregate(aggregate_id: str) -> Response[bytes]:
        try:
            found = engine.get_local(aggregate_id)
        except NotOwnedError as exc:
            raise HTTPException(status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
        if found is None:
            raise NotFoundException(f"no {engine.settings.store} {aggregate_id!r}")
        return Response(engine.applier.aggregates.to_json(found), media_type="application/json")

    return Litestar(route_handlers=[checkpoint, aggregate], logging_config=None)
