"""Cold bootstrap: copy a consistent checkpoint of a partition from a peer.

A replica with no usable state (new node, lost disk, changelog truncated past it) must not
replay gigabytes of changelog: it streams a peer's RocksDB checkpoint, verifies it, installs
it, then tails the changelog from the checkpoint's own offset (invariants 1 and 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException, HTTPResponse, HTTPSConnection
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from backbone.routing import Replica, RoutingTable
from backbone.settings import EngineSettings
from backbone.snapshot import Manifest, UnsafeArchiveError, receive_checkpoint
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics

log = structlog.get_logger(__name__)

OFFSET_HEADER = "x-backbone-checkpoint-offset"
TIMEOUT_S = 60.0
ROUNDS = 3
ROUND_PAUSE_S = 1.0


class SourceError(RuntimeError):
    """One peer could not serve a usable checkpoint; the next one is tried."""


class NoSourceError(RuntimeError):
    """No peer could serve the partition."""


@dataclass(slots=True)
class BootstrapProgress:
    partition: int
    source: str
    received: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.received / elapsed
        return {
            "partition": self.partition,
            "source": self.source,
            "bytes": self.received,
            "total_bytes": self.total,
            "percent": round(100.0 * self.received / self.total, 1) if self.total else None,
            "seconds": round(elapsed, 3),
            "mb_per_s": round(rate / 1e6, 2),
            "eta_s": round((self.total - self.received) / rate, 1) if rate > 0 else None,
        }


class _Download:
    """One checkpoint download on http.client, read by ``receive_checkpoint``'s worker
    thread straight into its disk buffers (httpx's async streaming moved a few hundred
    MB/s in pure Python; this, several GB/s)."""

    def __init__(self, url: str, headers: dict[str, str], tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        self._conn: HTTPConnection = (
            HTTPSConnection(host, port, context=tls, timeout=TIMEOUT_S)
            if parts.scheme == "https"
            else HTTPConnection(host, port, timeout=TIMEOUT_S)
        )
        self._path = parts.path
        self._headers = headers

    async def open(self) -> HTTPResponse:
        def request() -> HTTPResponse:
            self._conn.request("GET", self._path, headers=self._headers)
            return self._conn.getresponse()

        return await asyncio.to_thread(request)

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked reading this socket, close() would not.
        if self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


class Bootstrapper:
    def __init__(
        self,
        routing: RoutingTable,
        tls: ssl.SSLContext | None,
        token: str,
        zone: str,
        self_url: str,
        staging_root: Path,
    ) -> None:
        self.routing = routing
        self.tls = tls
        self.token = token
        self.zone = zone
        self.self_url = self_url
        self.staging_root = staging_root
        self.progress: dict[int, BootstrapProgress] = {}
        self._last_report = 0.0

    def sources(self, partition: int) -> list[str]:
        """Peers holding the partition: same zone first, then standbys, then the active."""
        routes = self.routing.routes
        standbys = routes.standbys.get(partition, [])
        active = routes.active.get(partition)
        candidates: list[tuple[int, int, Replica]] = [
            (0 if r.zone == self.zone else 1, 0, r) for r in standbys
        ]
        if active is not None:
            candidates.append((0 if active.zone == self.zone else 1, 1, active))
        ordered = [r.endpoint for _, _, r in sorted(candidates, key=lambda c: c[:2])]
        return [url for url in dict.fromkeys(ordered) if url != self.self_url]

    async def bootstrap(
        self, partition: int, target: Path, changelog_begin: int, source: str | None = None
    ) -> Manifest:
        """Install a verified checkpoint at ``target`` (whose store must be closed).

        Peers open their stores as the same rebalance completes, so a few rounds are tried,
        each with the group's latest routes."""
        failures: list[str] = []
        for round_ in range(ROUNDS):
            if round_:
                await asyncio.sleep(ROUND_PAUSE_S)
            if source is None:
                with contextlib.suppress(Exception):
                    await self.routing.refresh()
            for url in [source] if source else self.sources(partition):
                try:
                    return await self._fetch(partition, url, target, changelog_begin)
                except (OSError, HTTPException, UnsafeArchiveError, SourceError) as exc:
                    failures.append(f"{url}: {exc}")
                    log.warning(
                        "bootstrap_source_failed", partition=partition, source=url, error=str(exc)
                    )
                finally:
                    self.progress.pop(partition, None)
        detail = "; ".join(failures[-3:]) if failures else "no peer is known to hold it"
        raise NoSourceError(f"no peer could serve partition {partition}: {detail}")

    async def _fetch(self, partition: int, url: str, target: Path, begin: int) -> Manifest:
        progress = BootstrapProgress(partition, url)
        self.progress[partition] = progress
        headers = {"authorization": f"Bearer {self.token}"}
        endpoint = f"{url}/internal/partitions/{partition}/checkpoint"
        log.info("bootstrap_started", partition=partition, source=url)
        download = _Download(endpoint, headers, self.tls)
        try:
            response = await download.open()
            if response.status != 200:
                body = (await asyncio.to_thread(response.read, 300)).decode(errors="replace")
                raise SourceError(f"answered {response.status}: {body}")
            offset = int(response.getheader(OFFSET_HEADER, "-1"))
            if offset < begin:
                # Invariant 3: records between the checkpoint and the changelog's start are gone.
                raise SourceError(
                    f"checkpoint at changelog offset {offset} is older than the changelog's "
                    f"first offset {begin}: installing it would leave a gap"
                )

            def report(received: int, total: int) -> None:
                progress.received, progress.total = received, total
                if time.monotonic() - self._last_report >= 2.0:
                    self._last_report = time.monotonic()
                    log.info("bootstrap_progress", **progress.as_dict())

            def check(manifest: Manifest) -> None:
                if manifest.partition != partition or manifest.changelog_offset < begin:
                    raise SourceError(
                        f"checkpoint is for partition {manifest.partition} at changelog offset "
                        f"{manifest.changelog_offset}; wanted partition {partition} from {begin}"
                    )

            manifest = await receive_checkpoint(response, target, self.staging_root, report, check)
        finally:
            download.close()
        log.info(
            "bootstrap_finished",
            changelog_offset=manifest.changelog_offset,
            **progress.as_dict(),
        )
        return manifest


def client_tls(settings: EngineSettings) -> ssl.SSLContext | None:
    """The client side of mutual TLS on the internal API, when it is configured."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def bootstrap_offline(
    settings: EngineSettings, partition: int, source: str | None = None
) -> Manifest:
    """``<service> bootstrap``: replace a stopped node's store of ``partition`` by a peer's
    checkpoint; the node tails the changelog from there when it starts."""
    if not 0 <= partition < settings.partitions:
        raise ValueError(f"partition {partition} does not exist: use 0..{settings.partitions - 1}")
    stores = StoreRegistry(settings.data_dir, settings.store)
    stores.open(partition)  # StoreLockedError while the node runs: it must be stopped first
    stores.close(partition)
    topics = Topics(settings.service, settings.store)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    routing = RoutingTable(settings.bootstrap_servers, topics.group)
    await consumer.start()
    await routing.start()
    try:
        tp = TopicPartition(topics.changelog, partition)
        begin = (await consumer.beginning_offsets([tp]))[tp]
        await routing.refresh()
        bootstrapper = Bootstrapper(
            routing,
            client_tls(settings),
            settings.internal_token,
            settings.zone,
            settings.internal_url,
            settings.data_dir / "incoming",
        )
        return await bootstrapper.bootstrap(partition, stores.path(partition), begin, source)
    finally:
        await routing.stop()
        await consumer.stop()
