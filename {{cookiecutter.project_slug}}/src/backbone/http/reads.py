"""What the public and internal reads share: parsing a read's options, and turning a
query's outcome into a response (503 with Retry-After, 504, 400)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
)
from litestar.types import Scope

from backbone.http.reply import JsonReply
from backbone.ids import InvalidIdError, check_id, check_raw_path
from backbone.node.engine import Engine
from backbone.node.positions import Position
from backbone.node.queries import FORWARDED_HEADER, BatchReply
from backbone.node.reads import ACTIVE, CONSISTENCY, NotReachedError, UnavailableError
from backbone.repartition.gate import RETRY_AFTER_S

# A 503 of the aggregate routes is brief (a rebalance, a paused write): say when to retry.
RETRY = {"retry-after": str(RETRY_AFTER_S)}
POSITION_HEADER = "x-backbone-position"
_FORWARDED = FORWARDED_HEADER.encode()
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


def checked_id(aggregate_id: str, scope: Scope) -> str:
    """The id of the path if it follows :data:`backbone.ids.ID_RULE`, else a 400 stating it."""
    try:
        check_raw_path(scope.get("raw_path"))
        return check_id(aggregate_id)
    except InvalidIdError as exc:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc


def read_query(scope: Scope) -> tuple[str, Position | None, bool]:
    """A read's consistency, position and whether a peer forwarded it, from its raw scope
    (not declared as parameters: Litestar's parsing of them cost a tenth of a read)."""
    consistency, position = ACTIVE, None
    if query := scope["query_string"]:
        options = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        consistency = options.get("consistency", ACTIVE)
        position = options.get("position")
    forwarded = any(name == _FORWARDED for name, _ in scope["headers"])
    return (*read_options(consistency, position), forwarded)


async def read_answer(
    engine: Engine[Any], aggregate_id: str, scope: Scope, *, forward: bool
) -> JsonReply:
    """The read of one aggregate that ``scope`` asks for; an HTTPException (400, 503,
    504) as the routes answer it."""
    consistency, position, forwarded = read_query(scope)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + engine.settings.read_your_writes_timeout_ms / 1000
    try:
        answer = await engine.queries.read(
            aggregate_id, consistency, position, deadline, forward and not forwarded
        )
    except ValueError as exc:
        raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
    except UnavailableError as exc:
        if not exc.retry:
            raise HTTPException(status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
        raise HTTPException(
            status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=f"{exc}: retry shortly", headers=RETRY
        ) from exc
    except NotReachedError as exc:
        raise HTTPException(status_code=HTTP_504_GATEWAY_TIMEOUT, detail=str(exc)) from exc
    return JsonReply(answer.status, answer.body, answer.headers)


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
