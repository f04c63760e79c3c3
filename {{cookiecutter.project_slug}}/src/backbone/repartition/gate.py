"""Where this node's POSTs go, and the brief pause while that changes.

A repartitioning pauses every node's writes, records the end of the old topic (the
barrier), then lets writes resume to the new generation's topic. Every POST acknowledged
before a node paused lies below the barrier, and every later one goes to the new topic,
so a client whose POSTs reach different nodes one after another keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

RETRY_AFTER_S = 1


class WritesPausedError(RuntimeError):
    """Writes are paused for a moment while the partition count changes."""


@dataclass(frozen=True, slots=True)
class Target:
    topic: str
    partitions: int
    generation: int = 0  # what a write's position names


class WriteGate:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.paused_since: float | None = None
        self.longest_pause_s = 0.0  # on this node, since it started
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[Target]:
        if self.paused_since is not None:
            raise WritesPausedError(
                "writes are paused while the service changes its partition count: "
                f"retry in {RETRY_AFTER_S} s"
            )
        self._inflight += 1
        self._idle.clear()
        try:
            yield self.target
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def pause(self) -> None:
        """Refuse new writes; returns once those under way are acknowledged."""
        if self.paused_since is None:
            self.paused_since = asyncio.get_running_loop().time()
        await self._idle.wait()

    def resume(self, target: Target) -> None:
        self.target = target
        if self.paused_since is not None:
            paused = asyncio.get_running_loop().time() - self.paused_since
            self.longest_pause_s = max(self.longest_pause_s, paused)
            log.info("writes_resumed", paused_s=round(paused, 3), topic=target.topic)
        self.paused_since = None
