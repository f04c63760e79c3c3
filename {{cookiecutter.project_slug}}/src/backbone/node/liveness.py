"""Which peers are dead, and the removal of a dead one from the consumer group.

Every node probes the internal API of each member the routing view names. A peer is dead
to it once it refused connections ``REFUSALS`` times in a row (its process is gone: a
paused one still accepts) or no probe sent over ``dead_after_s`` was answered. Answers
carry the peers the answering node suspects; the live node with the lowest internal URL
removes a dead peer when every live peer suspects it too, so one node acts and a peer cut
off from one node only is kept. A paused node removed by mistake is fenced by its writer
epochs and joins again (docs/decisions/0022).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog

from backbone.node.routing import RoutingTable

log = structlog.get_logger(__name__)

HEALTH_PATH = "/internal/health"
REFUSALS = 2
PROBE_TIMEOUT_S = 1.0


@dataclass
class _Peer:
    failing_since: float | None = None  # when the first unanswered probe of a streak was sent
    failed_at: float = 0.0  # when the latest unanswered probe was sent
    refusals: int = 0
    suspects: frozenset[str] = frozenset()  # as of its latest answer
    probing: asyncio.Task[None] | None = None

    def answered(self, suspects: frozenset[str]) -> None:
        self.failing_since, self.refusals, self.suspects = None, 0, suspects

    def missed(self, sent: float, refused: bool) -> None:
        if self.failing_since is None:
            self.failing_since = sent
        self.failed_at = max(self.failed_at, sent)
        self.refusals = self.refusals + 1 if refused else 0

    def dead(self, after_s: float) -> bool:
        # Measured between probes sent, not to now: a node that was itself paused must
        # not find every peer dead on waking.
        since = self.failing_since
        return self.refusals >= REFUSALS or (
            since is not None and self.failed_at - since >= after_s
        )


class PeerWatch:
    def __init__(
        self,
        routing: RoutingTable,
        http: aiohttp.ClientSession,
        self_url: str,
        dead_after_s: float,
        interval_s: float,
        remove: Callable[[str], Awaitable[None]],
    ) -> None:
        self.routing = routing
        self.http = http
        self.self_url = self_url
        self.dead_after_s = dead_after_s
        self.interval_s = interval_s
        self.remove = remove
        self._peers: dict[str, _Peer] = {}
        self._removed: dict[str, int] = {}  # endpoint -> the view's generation then
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.dead_after_s > 0:
            self._task = asyncio.create_task(self._run(), name="peer-watch")

    async def stop(self) -> None:
        tasks = [p.probing for p in self._peers.values() if p.probing is not None]
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def suspects(self) -> list[str]:
        """Peers this node did not reach at its latest probe."""
        return sorted(url for url, p in self._peers.items() if p.failing_since is not None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._probe_all(loop.time())
            try:
                await self._decide()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("peer_removal_failed", error=str(exc))
            await asyncio.sleep(self.interval_s)

    def _probe_all(self, now: float) -> None:
        listed = {m.endpoint for m in self.routing.members if m.endpoint != self.self_url}
        listed.discard("")
        for url in set(self._peers) - listed:
            gone = self._peers.pop(url)
            self._removed.pop(url, None)
            if gone.probing is not None:
                gone.probing.cancel()
        for url in listed:
            peer = self._peers.setdefault(url, _Peer())
            if peer.probing is None or peer.probing.done():
                peer.probing = asyncio.create_task(self._probe(url, peer, now))

    async def _probe(self, url: str, peer: _Peer, sent: float) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        reached = peer.failing_since is None
        try:
            async with self.http.get(url + HEALTH_PATH, timeout=timeout) as response:
                body = await response.json() if response.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            refused = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                exc.os_error, ConnectionRefusedError
            )
            peer.missed(sent, refused)
            if reached:
                log.info("peer_unreachable", peer=url, refused=refused, error=type(exc).__name__)
        else:
            # Any answer, even an error, shows the process and its event loop run.
            suspects = body.get("suspects", []) if isinstance(body, dict) else []
            peer.answered(frozenset(s for s in suspects if isinstance(s, str)))
            if not reached:
                log.info("peer_reachable", peer=url)

    async def _decide(self) -> None:
        dead = {url for url, p in self._peers.items() if p.dead(self.dead_after_s)}
        if not dead:
            return
        live = [p for url, p in self._peers.items() if url not in dead]
        if min(self.self_url, *(u for u in self._peers if u not in dead)) != self.self_url:
            return  # a live peer with a lower URL decides
        generation = self.routing.routes.generation
        for url in sorted(dead):
            if self._removed.get(url) == generation:
                continue  # removed already; the next view will not name it
            if not all(url in p.suspects for p in live):
                continue  # a live peer still reaches it
            log.warning("peer_dead", peer=url, generation=generation)
            await self.remove(url)
            self._removed[url] = generation
