"""The hot routes answer their own requests without Litestar, as Litestar would (the answers
themselves are compared route by route in ``test_public_api``), and hand over what only
Litestar can judge. Without Kafka: the engine's lifespan never runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from litestar.types import Receive, Scope, Send
from test_public_api import SERVICE, settings

from backbone.http import hot_routes
from backbone.http.hot_routes import HotRoutes

NAMED = {"type": "named", "name": "Bob"}


class Seen:
    """The Litestar app, noting the paths of the HTTP requests it is asked to answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
def litestar(tmp_path: Path) -> Seen:
    return Seen(SERVICE.app(settings(tmp_path)))


@pytest.fixture
def client(litestar: Seen) -> Iterator[TestClient[Any]]:
    yield TestClient(HotRoutes(litestar, litestar.app.state.engine, "things"))  # type: ignore[arg-type]


def test_the_hot_routes_answer_without_litestar(client: TestClient[Any], litestar: Seen) -> None:
    assert client.post("/things/t-1/events", json={"type": "named", "nmae": "B"}).status_code == 400
    assert client.post("/things/t-1/events", content=b"{").status_code == 400
    assert client.get("/things/t-1?consistency=all").status_code == 400
    assert client.get("/things/%2E%2E").status_code == 400
    assert litestar.paths == []


def test_what_only_litestar_can_judge_is_handed_over(
    client: TestClient[Any], litestar: Seen
) -> None:
    limit = litestar.app.state.engine.settings.max_body_bytes
    too_big = client.post("/things/t-1/events", content=b" " * (limit + 1))
    assert too_big.status_code == 413
    chunked = client.post("/things/t-1/events", content=iter([b"{", b"}"]))
    assert chunked.status_code == 400  # read by Litestar: no length announced
    assert client.get("/things/a%2Fb").status_code == 400  # the id rule, said by Litestar's 404
    assert client.get("/schema/openapi.json").status_code == 200
    # Litestar reads it as /things/t-1, which this engine (not started) cannot serve yet.
    assert client.get("/things/t-1/").status_code == 503
    assert litestar.paths == [
        "/things/t-1/events",
        "/things/t-1/events",
        "/things/a/b",
        "/schema/openapi.json",
        "/things/t-1/",
    ]


def test_refusals_and_failures_are_logged(
    client: TestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals: list[tuple[int, str]] = []
    failures: list[dict[str, Any]] = []

    async def log_refusals(message: Any, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            refusals.append((message["status"], scope["path"]))

    class Log:
        def exception(self, event: str, **fields: Any) -> None:
            failures.append({"event": event, **fields})

    monkeypatch.setattr(hot_routes, "log_refusals", log_refusals)
    monkeypatch.setattr(hot_routes, "log", Log())
    assert client.get("/things/t-1?consistency=all").status_code == 400
    failed = client.post("/things/t-1/events", json=NAMED)  # its engine has no producer
    assert failed.status_code == 500
    assert failed.json() == {"status_code": 500, "detail": "Internal Server Error"}
    assert refusals == [(400, "/things/t-1"), (500, "/things/t-1/events")]
    assert failures == [{"event": "request_failed", "method": "POST", "path": "/things/t-1/events"}]
