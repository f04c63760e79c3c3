"""The public server sends what one turn of the event loop writes in one send, and answers
as uvicorn's own protocol does (``backbone.http.coalesce``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn
from litestar.types import Receive, Scope, Send

from backbone.http.coalesce import CoalescingHttpTools, CoalescingTransport


class Recorder:
    """The transport under the coalescing one: what it was asked to send, and when closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


async def _next_turn() -> None:
    """Returns once every callback scheduled before it has run (the loop runs them FIFO)."""
    turn = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(turn.set_result, None)
    await turn


def test_the_writes_of_one_turn_leave_in_one_send() -> None:
    async def scenario() -> list[list[bytes]]:
        below = Recorder()
        transport = CoalescingTransport(below, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        transport.write(b"{}")
        seen = [list(below.sent)]
        await _next_turn()
        seen.append(list(below.sent))
        transport.write(b"next")
        await _next_turn()
        seen.append(list(below.sent))
        return seen

    before, after, later = asyncio.run(scenario())
    assert before == []
    assert after == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]
    assert later == [b"HTTP/1.1 202 Accepted\r\n\r\n{}", b"next"]


def test_close_sends_what_is_pending_first_and_nothing_after() -> None:
    async def scenario() -> Recorder:
        below = Recorder()
        transport = CoalescingTransport(below, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"last words")
        transport.close()
        transport.write(b"too late")
        await _next_turn()
        assert transport.get_extra_info("peername") == "info peername"
        return below

    below = asyncio.run(scenario())
    assert below.sent == [b"last words"]
    assert below.closed


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = scope["path"].encode() + b":" + body
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [(b"content-type", b"text/plain"), (b"x-n", body or b"-")],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def test_uvicorn_answers_through_it_on_one_connection_as_usual() -> None:
    async def scenario() -> list[Any]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # connections wait in the backlog until uvicorn accepts them
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(_app, http=CoalescingHttpTools, log_config=None, lifespan="off")
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                answers = [await client.post(f"/c-{i}/events", content=str(i)) for i in range(50)]
                together = await asyncio.gather(
                    *(client.post(f"/p-{i}", content=str(i)) for i in range(20))
                )
                streamed = await client.get("/stream")
            return [answers, together, streamed]
        finally:
            server.should_exit = True
            await task

    answers, together, streamed = asyncio.run(scenario())
    for i, answer in enumerate(answers):
        assert answer.status_code == 202
        assert answer.text == f"/c-{i}/events:{i}"
        assert answer.headers["x-n"] == str(i)
    assert [a.text for a in together] == [f"/p-{i}:{i}" for i in range(20)]
    assert streamed.status_code == 200
    assert streamed.text == "one,two,three"
