"""The two hot routes answered before Litestar: submitting an event and reading an aggregate.

Litestar's work per request (routing, kwargs and signature models, the response) cost a
third of a POST's CPU (ADR 0026). ``HotRoutes`` answers ``POST /<plural>/{id}/events`` and
``GET /<plural>/{id}`` with the functions their Litestar handlers call, and their errors as
Litestar's exception handling would. Every other request goes on to Litestar unchanged, and
so do these when Litestar must judge them: an id holding ``/``, a body without a length or
longer than the limit (Litestar's 413). A traced node does not use it: the OpenTelemetry
middleware is Litestar's.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Receive, Scope, Send

from backbone.http.public import event_submitter
from backbone.http.reads import checked_id, read_answer
from backbone.http.reply import JsonReply
from backbone.node.engine import Engine
from backbone.observability import log_refusals

log = structlog.get_logger(__name__)

_EVENTS = "/events"
_CONTENT_LENGTH = b"content-length"


class HotRoutes:
    """An ASGI app: the hot routes of ``plural`` itself, anything else by ``app``."""

    def __init__(self, app: ASGIApp, engine: Engine[Any], plural: str) -> None:
        self.app = app
        self.engine = engine
        self.prefix = f"/{plural}/"
        self.max_body = engine.settings.max_body_bytes  # Litestar's request_max_body_size
        self.submit = event_submitter(engine)

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix):
                rest = path[len(self.prefix) :]
                method = scope["method"]
                if method == "GET" and rest and "/" not in rest:
                    await self._answer(self._read(rest, scope), scope, receive, send)
                    return
                if method == "POST" and rest.endswith(_EVENTS):
                    aggregate_id = rest[: -len(_EVENTS)]
                    if aggregate_id and "/" not in aggregate_id and self._fits(scope):
                        body = await _body(receive)
                        if body is not None:
                            submitted = self.submit(aggregate_id, body, scope)
                            await self._answer(submitted, scope, receive, send)
                        return
        await self.app(scope, receive, send)

    async def _read(self, aggregate_id: str, scope: Scope) -> JsonReply:
        return await read_answer(self.engine, checked_id(aggregate_id, scope), scope, forward=True)

    def _fits(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                return value.isdigit() and int(value) <= self.max_body
        return False

    async def _answer(self, reply: Any, scope: Any, receive: Receive, send: Send) -> None:
        try:
            answer = await reply
        except HTTPException as exc:
            answer = _error(exc.status_code, exc.detail, exc.headers or {})
        except Exception:
            log.exception("request_failed", method=scope["method"], path=scope["path"])
            answer = _error(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error", {})

        if answer.status < 400:
            await answer(scope, receive, send)
            return

        async def logged(message: Any) -> None:
            await log_refusals(message, scope)
            await send(message)

        await answer(scope, receive, logged)


def _error(status: int, detail: str, headers: dict[str, str]) -> JsonReply:
    """The body Litestar answers an HTTPException with."""
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    return JsonReply(status, body, headers)


async def _body(receive: Receive) -> bytes | None:
    """The request's body; None when the client left before sending it all."""
    chunks: list[bytes] = []
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
