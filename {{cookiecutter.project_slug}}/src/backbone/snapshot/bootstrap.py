"""Cold bootstrap: copy a consistent checkpoint of a partition from a peer.

A replica with no usable state (new node, lost disk, changelog truncated past it) must not
replay gigabytes of changelog: it streams a peer's RocksDB checkpoint, verifies it, installs
it, then tails the changelog from the checkpoint's own offset: data and offsets come from
one checkpoint, so nothing is skipped and the fences make any overlap harmless.

Peers are not trusted to behave: any error from one source moves on to the next, busy or
failing sources are retried with backoff and jitter until an overall deadline, and a
transfer slower than a minimum rate is abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse, HTTPSConnection
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import structlog

from backbone.settings import EngineSettings
from backbone.snapshot.checkpoint import Manifest, verify_checkpoint
from backbone.snapshot.install import receive_checkpoint

log = structlog.get_logger(__name__)

OFFSET_HEADER = "x-backbone-checkpoint-offset"
# On a 404: "usable" when the peer holds a store the changelog completes but does not serve
# it yet (it is restoring), "none" when it holds no such store.
COPY_HEADER = "x-backbone-copy"
SOCKET_TIMEOUT_S = 60.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 15.0


class SourceError(RuntimeError):
    """One peer could not serve a usable checkpoint; the next one is tried."""


class SourceBusyError(SourceError):
    """The peer holds a copy of the partition but cannot serve it right now."""


class NoCopyError(SourceError):
    """The peer says it holds no copy that the changelog completes."""


class NoSourceError(RuntimeError):
    """No peer could serve the partition. ``copy_exists``: some member of the group still
    reports a usable copy (so rebuilding from elsewhere would throw it away)."""

    def __init__(self, message: str, copy_exists: bool) -> None:
        super().__init__(message)
        self.copy_exists = copy_exists


@dataclass(frozen=True, slots=True)
class Limits:
    deadline_s: float = 1800.0  # for one bootstrap: every source, retry and transfer
    min_bytes_per_s: float = 1_000_000.0  # a transfer slower than this over a window ends
    stall_window_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Limits:
        return cls(
            float(settings.bootstrap_deadline_s),
            float(settings.bootstrap_min_bytes_per_s),
            float(settings.bootstrap_stall_s),
        )


class Peers(Protocol):
    """Where copies of a partition may be found."""

    async def refresh(self) -> None: ...

    def sources(self, partition: int) -> list[str]:
        """Internal URLs of peers serving the partition, best first."""
        ...

    def holds_copy(self, partition: int, changelog_begin: int, ruled_out: set[str]) -> bool:
        """Whether a member other than those in ``ruled_out`` (URLs that said they hold no
        copy) reports a store of the partition that the changelog still completes."""
        ...


class FixedPeers:
    """Sources named by an operator (``bootstrap --from``), tried in the order given."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = [url.rstrip("/") for url in urls]

    async def refresh(self) -> None:
        return None

    def sources(self, partition: int) -> list[str]:
        return list(self.urls)

    def holds_copy(self, partition: int, changelog_begin: int, ruled_out: set[str]) -> bool:
        return bool(set(self.urls) - ruled_out)


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
    MB/s in pure Python; this, several GB/s). Counts the body bytes it hands out, so that
    a stalled transfer is seen even while no disk buffer fills."""

    def __init__(self, url: str, headers: dict[str, str], tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        self._conn: HTTPConnection = (
            HTTPSConnection(host, port, context=tls, timeout=SOCKET_TIMEOUT_S)
            if parts.scheme == "https"
            else HTTPConnection(host, port, timeout=SOCKET_TIMEOUT_S)
        )
        self._path = f"{parts.path}?{parts.query}" if parts.query else parts.path
        self._headers = headers
        self._response: HTTPResponse | None = None
        self._sock: socket.socket | None = None
        self.received = 0

    async def open(self) -> HTTPResponse:
        def request() -> HTTPResponse:
            self._conn.request("GET", self._path, headers=self._headers)
            self._sock = self._conn.sock  # getresponse() hands it to a will-close response
            return self._conn.getresponse()

        self._response = await asyncio.to_thread(request)
        return self._response

    def readinto(self, buffer: memoryview, /) -> int:
        assert self._response is not None
        n = self._response.readinto(buffer)
        self.received += n
        return n

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked reading this socket, close() would not.
        sock = self._sock or self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._response is not None:
            self._response.close()
        self._conn.close()


class Bootstrapper:
    def __init__(
        self,
        peers: Peers,
        tls: ssl.SSLContext | None,
        token: str,
        staging_root: Path,
        limits: Limits = Limits(),
        changelog_end: Callable[[int], Awaitable[int]] | None = None,
        generation: int = 0,
    ) -> None:
        self.peers = peers
        # Partition p of another generation holds other keys: only this one's copies fit.
        self.generation = generation
        self.tls = tls
        self.token = token
        self.staging_root = staging_root
        self.limits = limits
        # The changelog grows while a bootstrap waits: a checkpoint is checked against its
        # end as of the checkpoint's answer, not as of the bootstrap's start.
        self.changelog_end = changelog_end
        self.progress: dict[int, BootstrapProgress] = {}
        self._last_report = 0.0

    async def bootstrap(
        self, partition: int, target: Path, changelog_begin: int, changelog_end: int
    ) -> Manifest:
        """Install a verified checkpoint at ``target`` (whose store must be closed).

        Tries every source in turn, round after round with growing pauses, until one
        serves a checkpoint or the deadline passes. Gives up after a round in which no
        source was busy and no member, but those that said they hold none, reported a
        usable copy when it last joined (NoSourceError with ``copy_exists`` False)."""
        deadline = time.monotonic() + self.limits.deadline_s
        failures: list[str] = []
        rounds = 0
        while True:
            with contextlib.suppress(Exception):  # stale routes are still worth trying
                await self.peers.refresh()
            urls = self.peers.sources(partition)
            busy = False
            ruled_out: set[str] = set()
            for url in urls:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await asyncio.wait_for(
                        self._fetch(partition, url, target, changelog_begin, changelog_end),
                        remaining,
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any fault of one source: try the next
                    busy = busy or isinstance(exc, SourceBusyError)
                    if isinstance(exc, NoCopyError):
                        ruled_out.add(url)
                    error = str(exc) or type(exc).__name__
                    failures.append(f"{url}: {error}")
                    log.warning(
                        "bootstrap_source_failed", partition=partition, source=url, error=error
                    )
                finally:
                    self.progress.pop(partition, None)
            if not busy and not self.peers.holds_copy(partition, changelog_begin, ruled_out):
                detail = f": {'; '.join(failures[-3:])}" if failures else ""
                raise NoSourceError(
                    f"no member of the group holds a copy of partition {partition}{detail}",
                    copy_exists=False,
                )
            rounds += 1
            pause = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**rounds) * random.uniform(0.5, 1.0)
            if time.monotonic() + pause >= deadline:
                detail = "; ".join(failures[-3:]) if failures else "no peer serves it"
                raise NoSourceError(
                    f"no peer could serve partition {partition} within "
                    f"{self.limits.deadline_s:g}s: {detail}",
                    copy_exists=busy
                    or self.peers.holds_copy(partition, changelog_begin, ruled_out),
                )
            log.info(
                "bootstrap_retrying",
                partition=partition,
                round=rounds,
                pause_s=round(pause, 2),
                sources=len(urls),
            )
            await asyncio.sleep(pause)

    async def _fetch(
        self, partition: int, url: str, target: Path, begin: int, end: int
    ) -> Manifest:
        progress = BootstrapProgress(partition, url)
        self.progress[partition] = progress
        headers = {"authorization": f"Bearer {self.token}"}
        endpoint = f"{url}/internal/partitions/{partition}/checkpoint?generation={self.generation}"
        log.info("bootstrap_started", partition=partition, source=url)
        download = _Download(endpoint, headers, self.tls)
        transfer = asyncio.create_task(
            self._transfer(download, progress, target, begin, end), name=f"copy-{partition}"
        )
        try:
            await self._watch(transfer, download)
            manifest = transfer.result()
        finally:
            download.close()
            transfer.cancel()
            await asyncio.gather(transfer, return_exceptions=True)
        log.info(
            "bootstrap_finished",
            changelog_offset=manifest.changelog_offset,
            **progress.as_dict(),
        )
        return manifest

    async def _watch(self, transfer: asyncio.Task[Manifest], download: _Download) -> None:
        """Wait for ``transfer``; end it when a window passes below the minimum rate."""
        window = self.limits.stall_window_s
        floor = self.limits.min_bytes_per_s * window
        mark, marked = download.received, time.monotonic()
        while not transfer.done():
            await asyncio.wait({transfer}, timeout=min(1.0, window / 4))
            now = time.monotonic()
            if transfer.done() or now - marked < window:
                continue
            if download.received - mark < floor:
                raise SourceError(
                    f"transfer stalled: {download.received - mark} bytes in the last "
                    f"{window:g}s, below the minimum of {self.limits.min_bytes_per_s:g} bytes/s"
                )
            mark, marked = download.received, now

    async def _transfer(
        self, download: _Download, progress: BootstrapProgress, target: Path, begin: int, end: int
    ) -> Manifest:
        partition = progress.partition
        response = await download.open()
        if response.status != 200:
            body = (await asyncio.to_thread(response.read, 300)).decode(errors="replace")
            copy = response.getheader(COPY_HEADER, "")
            error: type[SourceError] = SourceError
            if response.status == 429 or copy == "usable":
                error = SourceBusyError
            elif response.status == 404 and copy == "none":
                error = NoCopyError
            raise error(f"answered {response.status}: {body}")
        raw = response.getheader(OFFSET_HEADER, "")
        try:
            offset = int(raw)
        except ValueError:
            raise SourceError(f"{OFFSET_HEADER} is {raw[:40]!r}, not an offset") from None
        if self.changelog_end is not None:
            end = max(end, await self.changelog_end(partition))
        if offset < begin:
            # Records between the checkpoint and the changelog's start are gone: installing
            # it would leave the store without them, with no way to catch up.
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
            if manifest.generation != self.generation:
                raise SourceError(
                    f"checkpoint is of generation {manifest.generation}; this node is at "
                    f"generation {self.generation} (the partition count changed)"
                )
            if manifest.partition != partition or manifest.changelog_offset != offset:
                raise SourceError(
                    f"checkpoint is for partition {manifest.partition} at changelog offset "
                    f"{manifest.changelog_offset}; wanted partition {partition} at the "
                    f"offset its header names, {offset}"
                )

        def verify(directory: Path, manifest: Manifest) -> None:
            verify_checkpoint(directory, manifest, end)

        return await receive_checkpoint(download, target, self.staging_root, report, check, verify)
