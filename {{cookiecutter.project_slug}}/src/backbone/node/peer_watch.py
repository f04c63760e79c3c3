"""Which peers are dead, the removal of a dead one from the consumer group, and asking
the others to rejoin at once after a member left.

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
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import aiohttp
import structlog
from aiokafka import AIOKafkaConsumer

from backbone.node.clients import Clients, group_generation, request_rejoin
from backbone.settings import EngineSettings

log = structlog.get_logger(__name__)

HEALTH_PATH = "/internal/health"
REJOIN_PATH = "/internal/rejoin"
REFUSALS = 2
RECHECK_S = 0.05  # after a refusal: the next one confirms a dead process soon
PROBE_TIMEOUT_S = 1.0
RETRY_S = 2.0  # after a removal failed


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


def rejoin_from(consumer: AIOKafkaConsumer, generation: int) -> bool:
    """Join the group again now, unless ``consumer`` has joined a generation after
    ``generation`` already (a second rejoin would cost a second rebalance)."""
    if group_generation(consumer) > generation:
        return False
    request_rejoin(consumer)
    return True


class PeerWatch:
    def __init__(
        self,
        clients: Clients,
        settings: EngineSettings,
        remove: Callable[[str], Awaitable[object]],
    ) -> None:
        self.routing = clients.routing
        self.http = clients.http
        self.consumer = clients.consumer
        self.self_url = settings.internal_url
        self.auth = {"authorization": f"Bearer {settings.internal_token}"}
        self.dead_after_s = settings.peer_dead_after_ms / 1000
        self.interval_s = settings.peer_probe_interval_ms / 1000
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
            started = loop.time()
            try:
                if await self._round(started):
                    # The live peers may suspect it by now: ask them again at once.
                    await asyncio.sleep(RECHECK_S)
                    await self._round(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("peer_removal_failed", error=str(exc), retry_in_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(max(0.0, started + self.interval_s - loop.time()))

    async def _round(self, now: float) -> bool:
        """Probe, then decide on this round's answers (a refusal comes within
        milliseconds). True when a dead peer waits for the votes of live ones."""
        probes = self._probe_all(now)
        if probes:
            await asyncio.wait(probes, timeout=self.interval_s)
        return await self._decide()

    def _probe_all(self, now: float) -> list[asyncio.Task[None]]:
        """Probe every listed peer that has no probe under way; returns the new probes."""
        listed = {m.endpoint for m in self.routing.members if m.endpoint != self.self_url}
        listed.discard("")
        for url in set(self._peers) - listed:
            gone = self._peers.pop(url)
            self._removed.pop(url, None)
            if gone.probing is not None:
                gone.probing.cancel()
        started = []
        for url in listed:
            peer = self._peers.setdefault(url, _Peer())
            if peer.probing is None or peer.probing.done():
                peer.probing = asyncio.create_task(self._probe(url, peer, now))
                started.append(peer.probing)
        return started

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
            # A reset of a pooled connection: a new one tells whether the process is gone.
            reset = reached and isinstance(exc, aiohttp.ClientConnectionError)
            if (0 < peer.refusals < REFUSALS) or (reset and not isinstance(exc, TimeoutError)):
                await asyncio.sleep(RECHECK_S)
                await self._probe(url, peer, asyncio.get_running_loop().time())
        else:
            # Any answer, even an error, shows the process and its event loop run.
            suspects = body.get("suspects", []) if isinstance(body, dict) else []
            peer.answered(frozenset(s for s in suspects if isinstance(s, str)))
            if not reached:
                log.info("peer_reachable", peer=url)

    async def _decide(self) -> bool:
        dead = {url for url, p in self._peers.items() if p.dead(self.dead_after_s)}
        if not dead:
            return False
        live = {url: p for url, p in self._peers.items() if url not in dead}
        if min([self.self_url, *live]) != self.self_url:
            return False  # a live peer with a lower URL decides
        generation = self.routing.routes.generation
        waiting = False
        for url in sorted(dead):
            if self._removed.get(url) == generation:
                continue  # removed already; the next view will not name it
            if not all(url in p.suspects for p in live.values()):
                waiting = True  # a live peer still reaches it, or did at its last answer
                continue
            log.warning("peer_dead", peer=url, generation=generation)
            await self.remove(url)
            self._removed[url] = generation
            rejoin_from(self.consumer, generation)
            await self.nudge(generation, skip=dead)
        return waiting

    async def nudge(self, generation: int, skip: Collection[str] = ()) -> None:
        """After a member of group generation ``generation`` left or was removed: ask the
        peers to join again now, not at their next heartbeat (half of one sooner, on
        average)."""
        listed = {m.endpoint for m in self.routing.members} - {"", self.self_url, *skip}
        await asyncio.gather(*(self._nudge(url, generation) for url in sorted(listed)))

    async def _nudge(self, url: str, generation: int) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        try:
            async with self.http.post(
                url + REJOIN_PATH,
                params={"generation": generation},
                headers=self.auth,
                timeout=timeout,
            ):
                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("peer_not_asked_to_rejoin", peer=url, error=type(exc).__name__)
