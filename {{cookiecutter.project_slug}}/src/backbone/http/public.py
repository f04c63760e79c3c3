"""HTTP routes every service gets: submit an event, read an aggregate, health."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import Parameter, RawBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ASGIApp, Scope

from backbone.codec import DecodeError
from backbone.domain import event_type_name
from backbone.http.admin_auth import admin_guard
from backbone.http.reads import (
    POSITION_HEADER,
    RETRY,
    batch_request,
    batch_response,
    checked_id,
    read_answer,
)
from backbone.http.reply import JsonReply
from backbone.http.siblings import ask
from backbone.ids import ID_RULE
from backbone.node.engine import Engine
from backbone.node.queries import FORWARDED_HEADER
from backbone.readmodel import Projector, QueryError, ReadModel, ReadModelUnavailableError
from backbone.repartition.gate import WritesPausedError

log = structlog.get_logger(__name__)

EVENTS_PATH = "/{aggregate_id:str}/events"


def events_path_format(plural: str) -> str:
    """The OpenAPI path of the events route, e.g. ``/customers/{aggregate_id}/events``."""
    return "/" + plural + EVENTS_PATH.replace(":str", "")


def slash_in_id_handler(
    plural: str,
) -> Callable[[Request[Any, Any, Any], NotFoundException], Response[Any]]:
    """Answer 400 with the id rule, not a bare 404, when an id holds a ``/`` (or ``%2F``).

    The router splits the path before any handler sees it, so such a request matches no
    route; this handler of the router's 404 recognises the shape of an aggregate route.
    """
    prefix = f"/{plural}/"

    def handle(request: Request[Any, Any, Any], exc: NotFoundException) -> Response[Any]:
        path: str = request.scope["path"]
        if "route_handler" not in request.scope and path.startswith(prefix):
            rest = path[len(prefix) :]
            if request.method == "POST" and rest.endswith("/events"):
                rest = rest[: -len("/events")]
            elif request.method != "GET":
                rest = ""
            if "/" in rest.strip("/"):
                detail = f"the id contains '/': {ID_RULE}"
                return Response(
                    {"status_code": HTTP_400_BAD_REQUEST, "detail": detail},
                    status_code=HTTP_400_BAD_REQUEST,
                )
        return Response(
            {"status_code": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    return handle


Submit = Callable[[str, bytes, Scope], Awaitable[JsonReply]]


def event_submitter(engine: Engine[Any]) -> Submit:
    """What ``POST /<plural>/{id}/events`` answers (202 with the event's position), from the
    path's id, the body and the scope; an HTTPException (400, 422, 503) as the route answers
    it. Shared by the Litestar route and :mod:`backbone.http.hot_routes`."""
    handled = {event_type_name(t) for t in engine.domain.handlers.event_types}
    decode = engine.applier.events.decode

    async def submit(aggregate_id: str, body: bytes, scope: Scope) -> JsonReply:
        checked_id(aggregate_id, scope)
        try:
            event = decode(body)
        except DecodeError as exc:
            raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
        name = event_type_name(type(event))
        if name not in handled:
            raise HTTPException(
                status_code=HTTP_422_UNPROCESSABLE_ENTITY,
                detail=f"{name!r} is emitted by the service and cannot be submitted; "
                f"accepted types: {', '.join(sorted(handled))}",
            )
        try:
            position = await engine.submit(aggregate_id, event)
        except WritesPausedError as exc:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers=RETRY
            ) from exc
        token = str(position)
        accepted = {
            "id": aggregate_id,
            "type": name,
            "generation": position.generation,
            "partition": position.partition,
            "offset": position.offset,
            "position": token,
        }
        return JsonReply(HTTP_202_ACCEPTED, msgspec.json.encode(accepted), {POSITION_HEADER: token})

    return submit


def aggregate_routes(engine: Engine[Any], plural: str) -> list[Router]:
    """``POST /<plural>/{id}/events``, ``GET /<plural>/{id}`` and ``POST /<plural>:batchGet``."""
    submit = event_submitter(engine)

    @post(EVENTS_PATH, status_code=HTTP_202_ACCEPTED)
    async def submit_event(
        aggregate_id: Annotated[str, Parameter(description=ID_RULE)],
        scope: Scope,
        body: RawBody,
    ) -> ASGIApp:
        """Submit one event for the aggregate; it is applied asynchronously (202). The
        answer's ``position`` makes a later GET read this write (read-your-writes)."""
        return await submit(aggregate_id, body, scope)

    @get("/{aggregate_id:str}")
    async def get_aggregate(
        aggregate_id: Annotated[str, Parameter(description=ID_RULE)], scope: Scope
    ) -> ASGIApp:
        """The aggregate's current state. ``consistency=active`` (the default) reads the
        owner; ``any`` the nearest replica, this node's standby first. With the
        ``position`` a POST answered, waits until the replica has applied that write
        (read-your-writes), else 504. Headers say who answered: ``x-backbone-served-by``,
        ``-role``, ``-partition``, ``-generation``, ``-offset`` and, for a standby, ``-lag``."""
        return await read_answer(engine, checked_id(aggregate_id, scope), scope, forward=True)

    @post(f"/{plural}:batchGet", status_code=HTTP_200_OK)
    async def batch_get(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Many aggregates at once (``{"ids": [...], "consistency": "active"|"any"}``),
        asked of their holders in parallel: ``items`` by id, ``missing`` ids (no such
        aggregate) and ``failed`` ids with the reason."""
        batch = batch_request(engine, await request.body())
        forward = not request.headers.get(FORWARDED_HEADER)
        body = await batch_response(engine, batch, forward)
        return Response(body, media_type="application/json")

    return [
        Router(path=f"/{plural}", route_handlers=[submit_event, get_aggregate]),
        Router(path="/", route_handlers=[batch_get]),
    ]


def health_routes(engine: Engine[Any], projector: Projector[Any] | None = None) -> Router:
    """``/health/live`` fails (503, with the reasons) once a task of the node died: the
    processor, the changelog reader, the routing table or the read model's projector.
    ``/health/ready`` says in ``reasons`` why the node is not ready, and adds a
    ``read_model`` section: alive, failure, lag. A node of several workers answers for all of
    them (``workers``: each other worker's status; ``read_model``: worker 0's, which projects
    for the node)."""

    def dead() -> list[str]:
        reasons = engine.liveness()
        if projector is not None and projector.failure is not None:
            reasons.append(f"the read model projector died: {projector.failure}")
        return reasons

    def status() -> dict[str, Any]:
        status = engine.status()
        if projector is not None:
            status["read_model"] = projector.status()
            if projector.failure is not None:
                status["reasons"].append(f"the read model projector died: {projector.failure}")
                status["ready"] = False
        return status

    _health[engine] = lambda: {"status": status(), "dead": dead()}

    @get("/live")
    async def live() -> Response[dict[str, Any]]:
        reasons = dead()
        # A worker that does not answer is left to the supervisor, which starts it again.
        for worker, health in (await _workers_health(engine)).items():
            if health is not None:
                reasons.extend(f"worker {worker}: {r}" for r in health["dead"])
        if reasons:
            body = {"status": "failed", "reason": "; ".join(reasons), "reasons": reasons}
            return Response(body, status_code=HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"status": "ok"})

    @get("/ready")
    async def ready() -> Response[dict[str, Any]]:
        body = status()
        others = await _workers_health(engine)
        if others:
            body["workers"] = {}
            for worker, health in sorted(others.items()):
                if health is None:
                    body["reasons"].append(f"worker {worker} did not answer: it is starting")
                    continue
                body["workers"][worker] = health["status"]
                if "read_model" in health["status"]:  # worker 0's: the node's read model
                    body.setdefault("read_model", health["status"]["read_model"])
                body["reasons"].extend(f"worker {worker}: {r}" for r in health["status"]["reasons"])
            body["ready"] = not body["reasons"]
        code = 200 if body["ready"] else HTTP_503_SERVICE_UNAVAILABLE
        return Response(body, status_code=code)

    return Router(path="/health", route_handlers=[live, ready])


# Per engine, its health as the internal API serves it to the node's other workers.
_health: weakref.WeakKeyDictionary[Engine[Any], Callable[[], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def own_health(engine: Engine[Any]) -> dict[str, Any]:
    """This worker's ``status`` (as ``/health/ready``) and ``dead`` (as ``/health/live``)."""
    return _health[engine]()


async def _workers_health(engine: Engine[Any]) -> dict[str, dict[str, Any] | None]:
    answers = await ask(engine, "/internal/worker-health")
    return {w: None if text is None else msgspec.json.decode(text) for w, text in answers.items()}


def admin_routes(engine: Engine[Any]) -> Router:
    """``/admin/*``: only for the bearer of ``ADMIN_TOKEN``."""

    @get("/assignment")
    async def assignment() -> dict[str, Any]:
        """Who holds what, the constraints the assignor gave up, this node's standbys."""
        if engine.parts is None:
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
                detail="the node is starting: it has no assignment yet, retry shortly",
                headers=RETRY,
            )
        return engine.assignment_view()

    return Router(
        path="/admin",
        route_handlers=[assignment],
        guards=[admin_guard(engine.settings.admin_token)],
        security=[{"admin_token": []}],
    )


def read_model_routes(model: ReadModel[Any], plural: str) -> Router:
    """``GET /<plural>?column=value&limit=&after=``: list and filter from the SQL read model,
    in id order, a page at a time (keyset pagination: ``after`` is the previous page's
    ``next``; ``next`` is null on the last page)."""

    @get("/")
    async def list_aggregates(
        request: Request[Any, Any, Any],
        limit: Annotated[str, Parameter(description="rows per page, 1 to 1000")] = "50",
        after: Annotated[str | None, Parameter(description="the previous page's next")] = None,
    ) -> dict[str, Any]:
        """Other query parameters filter: ``column=value``, on the read model's columns."""
        params = dict(request.query_params)
        params.pop("limit", None)
        params.pop("after", None)
        if "offset" in params:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST,
                detail="offset is not supported: page with after=<the previous page's next>, "
                "which skips and repeats no row while rows change",
            )
        try:
            rows = int(limit)
        except ValueError:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST, detail="limit must be an integer"
            ) from None
        if not 1 <= rows <= 1000:
            raise HTTPException(
                status_code=HTTP_400_BAD_REQUEST, detail="limit must be between 1 and 1000"
            )
        try:
            items = await asyncio.to_thread(model.query, params, rows, after)
        except QueryError as exc:
            raise HTTPException(status_code=HTTP_400_BAD_REQUEST, detail=str(exc)) from exc
        except ReadModelUnavailableError as exc:
            log.error("read_model_query_failed", error=str(exc))
            raise HTTPException(
                status_code=HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers=RETRY
            ) from None
        last = items[-1][model.live.key] if len(items) == rows else None
        return {"items": items, "limit": rows, "next": None if last is None else str(last)}

    return Router(path=f"/{plural}", route_handlers=[list_aggregates])
