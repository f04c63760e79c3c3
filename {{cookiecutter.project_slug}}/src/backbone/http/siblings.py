"""What the other workers of this node say (backbone.workers). A request to the shared public
port reaches one worker; for the node's metrics and health it asks the others through their
internal API."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import aiohttp

from backbone.workers import WORKER_ENV, siblings

if TYPE_CHECKING:
    from backbone.node.engine import Engine

TIMEOUT_S = 2.0


def this_worker() -> str:
    """This worker's index; "0" in a node of one process."""
    return os.environ.get(WORKER_ENV, "0")


async def ask(engine: Engine[Any], path: str) -> dict[str, str | None]:
    """Each other worker's answer to ``GET path`` on its internal API, by index: its text,
    or None from one that did not answer 200 within ``TIMEOUT_S``. Empty in a node of one
    process."""
    others = siblings()
    parts = engine.parts
    if not others or parts is None:
        return dict.fromkeys(others)
    auth = {"authorization": f"Bearer {engine.settings.internal_token}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)

    async def fetch(url: str) -> str | None:
        try:
            async with parts.clients.http.get(
                f"{url}{path}", headers=auth, timeout=timeout
            ) as answer:
                return await answer.text() if answer.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    answers = await asyncio.gather(*(fetch(url) for url in others.values()))
    return dict(zip(others, answers, strict=True))
