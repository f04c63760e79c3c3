"""HTTP routes every service gets: submit an event, read an aggregate, health."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from backbone.codec import DecodeError
from backbone.domain import event_type_name
from backbone.node.engine import Engine
from backbone.node.queries import FORWARDED_HEADER, NotOwnedError
from backbone.readmodel import QueryError, ReadModel

MAX_ID_LENGTH = 256


def _check_id(aggregate_id: str) -> None:
    if not aggregate_id.strip() or len(aggregate_id) > MAX_ID_LENGTH:
        raise HTTPException(
            status_code=HTTP_400_BAD_REQUEST,
            detail=f"the id must be 1 to {MAX_ID_LENGTH} characters, not blank",
        )


def aggregate_routes(engine: Engine[Any], plural: str) -> Router:
    """``POST /<plural>/{id}/events`` and ``GET /<plural>/{id}``."""
    handled = {event_type_name(t) for t in engine.domain.handlers.event_types}

    @post("/{aggregate_id:str}/events", status_code=HTTP_202_ACCEPTED)
    async def submit_event(aggregate_id: str, request: Request[Any, Any, Any]) -> dict[str, Any]:
        _check_id(aggregate_id)
        body = await request.body()
        try:
            event = engine.applier.events.decode(body)
        except DecodeError as exc:
            raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
        name = event_type_name(type(event))
        if name not in handled:
            raise HTTPException(
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                detail=f"{name!r} is emitted by the service and cannot be submitted; "
                f"accepted types: {', '.join(sorted(handled))}",
            )
        partition, offset = await engine.submit(aggregate_id, event)
        return {"id": aggregate_id, "type": name, "partition": partition, "offset": offset}

    @get("/{aggregate_id:str}")
    async def get_aggregate(aggregate_id: str, request: Request[Any, Any, Any]) -> Response[bytes]:
        _check_id(aggregate_id)
        try:
            aggregate = engine.get_local(aggregate_id)
        except NotOwnedError as exc:
            if request.headers.get(FORWARDED_HEADER):
                # One hop only: the sender's routes are stale, let it retry.
                raise HTTPException(
                    status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)
                ) from exc
            forwarded = await engine.forward_get(aggregate_id)
            if forwarded is None:
                raise HTTPException(
                    status_code=HTTP_503_SERVICE_UNAVAILABLE,
                    detail=f"{exc}, and no other node is known to own it yet: retry shortly",
                ) from exc
            status, body = forwarded
            return Response(body, status_code=status, media_type="application/json")
        if aggregate is None:
            raise HTTPException(
                status_code=HTTP_404_NOT_FOUND,
                detail=f"no {engine.settings.store} {aggregate_id!r}",
            )
        return Response(engine.applier.aggregates.to_json(aggregate), media_type="application/json")

    return Router(path=f"/{plural}", route_handlers=[submit_event, get_aggregate])


def health_routes(engine: Engine[Any]) -> Router:
    @get("/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready")
    async def ready() -> Response[dict[str, Any]]:
        status = engine.status()
        code = 200 if status["ready"] else HTTP_503_SERVICE_UNAVAILABLE
        return Response(status, status_code=code)

    return Router(path="/health", route_handlers=[live, ready])


def admin_routes(engine: Engine[Any]) -> Router:
    @get("/assignment")
    async def assignment() -> dict[str, Any]:
        """Who holds what, the constraints the assignor gave up, this node's standbys."""
        return engine.assignment_view()

    return Router(path="/admin", route_handlers=[assignment])


def read_model_routes(model: ReadModel[Any], plural: str) -> Router:
    """``GET /<plural>?column=value&limit=&offset=``: list and filter from the SQL read model."""

    @get("/")
    async def list_aggregates(request: Request[Any, Any, Any]) -> dict[str, Any]:
        params = dict(request.query_params)
        try:
            limit = int(params.pop("limit", "50"))
            offset = int(params.pop("offset", "0"))
        except ValueError:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST, detail="limit and offset must be integers"
            ) from None
        if not 1 <= limit <= 1000 or offset < 0:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST,
                detail="limit must be between 1 and 1000 and offset at least 0",
            )
        try:
            items = await asyncio.to_thread(model.query, params, limit, offset)
        except QueryError as exc:
            raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
        return {"items": items, "limit": limit, "offset": offset}

    return Router(path=f"/{plural}", route_handlers=[list_aggregates])
