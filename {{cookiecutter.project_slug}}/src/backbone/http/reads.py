"""What the public and internal reads share: parsing a read's options, and turning a
query's outcome into a response (503 with Retry-After, 504, 400)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar.exceptions import HTTPException
from litestar.params import Parameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
)

from backbone.ids import InvalidIdError, check_id
from backbone.node.engine import Engine
from backbone.node.positions import Position
from backbone.node.queries import BatchReply
from backbone.node.reads import CONSISTENCY, NotReachedError, UnavailableError
from backbone.repartition.gate import RETRY_AFTER_S

# A 503 of the aggregate routes is brief (a rebalance, a paused write): say when to retry.
RETRY = {"retry-after": str(RETRY_AFTER_S)}
POSITION_HEADER = "x-backbone-position"
CONSISTENCY_PARAMETER = Parameter(description="`active` reads the owner; `any` the nearest replica")
POSITION_PARAMETER = Parameter(description="a write's `position`: wait until it is applied")
BATCH_FORM = '{"ids": ["<id>", ...], "consistency": "active" or "any"}'


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]
    consistency: str = "active"


def read_options(consistency: str, position: str | None) -> tuple[str, Position | None]:
    if consistency not in CONSISTENCY:
        raise HTTPException(
            status_code=HTTP_400_BAD_REQUEST,
            detail=f"consistency must be one of {', '.join(CONSISTENCY)}, not {consistency!r}",
        )
    try:
        return consistency, None if position is None else Position.parse(position)
    except ValueError as exc:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc


async def read_response(
    engine: Engine[Any],
    aggregate_id: str,
    consistency: str,
    position: Position | None,
    forward: bool,
) -> ASGIResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + engine.settings.read_your_writes_timeout_ms / 1000
    try:
        answer = await engine.queries.read(aggregate_id, consistency, position, deadline, forward)
    except ValueError as exc:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    except UnavailableError as exc:
        raise HTTPException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=f"{exc}: retry shortly", headers=RETRY
        ) from exc
    except NotReachedError as exc:
        raise HTTPException(status_code=HTTP_504_GATEWAY_TIMEOUT, detail=str(exc)) from exc
    # An ASGIResponse is sent as it is: Litestar's Response conversion cost ~10% of a read.
    return ASGIResponse(
        body=answer.body,
        status_code=answer.status,
        media_type="application/json",
        headers=answer.headers,
    )


def batch_request(engine: Engine[Any], body: bytes) -> BatchRequest:
    """The request, checked: its size, its consistency; invalid ids are reported per id."""
    try:
        request = msgspec.json.decode(body, type=BatchRequest)
    except msgspec.DecodeError as exc:
        raise HTTPException(
            status_code=HTTP_400_BAD_REQUEST,
            detail=f"send {BATCH_FORM}: {exc}",
        ) from exc
    limit = engine.settings.batch_get_max_ids
    if len(request.ids) > limit:
        raise HTTPException(
            status_code=HTTP_400_BAD_REQUEST,
            detail=f"{len(request.ids)} ids asked for; at most {limit} per request "
            "(BATCH_GET_MAX_IDS): split the request",
        )
    read_options(request.consistency, None)
    return request


async def batch_response(engine: Engine[Any], request: BatchRequest, forward: bool) -> bytes:
    invalid: dict[str, str] = {}
    ids = []
    for aggregate_id in dict.fromkeys(request.ids):
        try:
            ids.append(check_id(aggregate_id))
        except InvalidIdError as exc:
            invalid[aggregate_id] = str(exc)
    try:
        reply = await engine.queries.batch_get(ids, request.consistency, forward)
    except UnavailableError as exc:
        reply = BatchReply(failed={i: str(exc) for i in ids})
    reply.failed.update(invalid)
    return msgspec.json.encode(reply)
