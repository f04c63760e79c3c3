"""Cold bootstrap against hostile, stalled and busy peers, and the serving side's limits.

The client side is driven against fake peers: small real HTTP servers in this process that
answer with a real checkpoint, with a malformed one, slowly, or not at all. The serving
side runs the real internal app under uvicorn with readers that stop reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
import xxhash
from litestar.testing import TestClient

from backbone.dev.cluster import wait_until
from backbone.dev.ports import free_port
from backbone.http.internal import internal_app
from backbone.repartition.plan import Generation
from backbone.settings import EngineSettings
from backbone.snapshot import FileEntry, Manifest, receive_checkpoint, stream_checkpoint
from backbone.snapshot.bootstrap import (
    COPY_HEADER,
    OFFSET_HEADER,
    Bootstrapper,
    FixedPeers,
    Limits,
    NoSourceError,
)
from backbone.store import PartitionStore

PARTITION = 3
TOKEN = "t"
CHECKPOINT_PATH = f"/internal/partitions/{PARTITION}/checkpoint"
# What a bootstrapper of generation 0 asks for: partition p of another generation holds
# other keys, so the request names its generation.
REQUESTED_PATH = f"{CHECKPOINT_PATH}?generation=0"
# The changelog the bootstrapping replica sees: it starts at 20 and ends at 1000.
BEGIN, END = 20, 1000
GOOD_OFFSET, GOOD_INPUT = 50, 60


# --- checkpoints ------------------------------------------------------------------------


def items_for(count: int, tag: bytes = b"v") -> dict[bytes, bytes]:
    return {b"customer-%05d" % i: tag + b"-state-%d" % i * 4 for i in range(count)}


async def _collect(store: PartitionStore, workdir: Path) -> tuple[Manifest, bytes]:
    manifest, chunks = await stream_checkpoint(store, workdir)
    return manifest, b"".join([chunk async for chunk in chunks])


def checkpoint_tar(
    path: Path, items: dict[bytes, bytes], changelog_offset: int, input_offset: int
) -> tuple[Manifest, bytes]:
    """A real store written at ``path``, and the real archive the engine streams of it."""
    store = PartitionStore(path, PARTITION)
    try:
        store.write(
            list(items.items()), changelog_offset=changelog_offset, input_offset=input_offset
        )
        return asyncio.run(_collect(store, path.parent / f"{path.name}-work"))
    finally:
        store.close()


@dataclass(frozen=True)
class Good:
    manifest: Manifest
    tar: bytes
    items: dict[bytes, bytes]


@pytest.fixture
def good(tmp_path: Path) -> Good:
    items = items_for(300)
    manifest, tar = checkpoint_tar(tmp_path / "live", items, GOOD_OFFSET, GOOD_INPUT)
    assert manifest.changelog_offset == GOOD_OFFSET and manifest.input_offset == GOOD_INPUT
    return Good(manifest, tar, items)


def members_of(tar: bytes) -> dict[str, bytes]:
    """Every member of an archive, in order (read with the standard library's tarfile)."""
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        return {
            info.name: archive.extractfile(info).read()  # type: ignore[union-attr]
            for info in archive.getmembers()
        }


def digest(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def make_tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def archive_of(manifest: Manifest, files: dict[str, bytes]) -> bytes:
    """A well-formed archive in the engine's layout, with correct digests of ``files``."""
    checksums = msgspec.json.encode({"files": {name: digest(data) for name, data in files.items()}})
    return make_tar(
        [("MANIFEST.json", manifest.to_json()), *files.items(), ("CHECKSUMS.json", checksums)]
    )


def negative_size_header(name: str, size: int) -> bytes:
    """A ustar header whose size field is base-256 encoded and negative, checksum fixed."""
    info = tarfile.TarInfo(name)
    info.size = 100
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    assert size < 0
    block[124:136] = b"\xff" + (256**11 + size).to_bytes(11, "big")  # two's complement
    block[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def store_contents(path: Path) -> tuple[dict[bytes, bytes], int, int]:
    store = PartitionStore(path, PARTITION)
    try:
        meta = store.meta()
        return dict(store.items()), meta.changelog_offset, meta.input_offset
    finally:
        store.close()


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- fake peers -------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(
        default_factory=lambda: {OFFSET_HEADER: str(GOOD_OFFSET)}
    )
    cut_at: int | None = None  # close the connection after this many body bytes


Respond = Callable[["FakePeer", BaseHTTPRequestHandler, int], None]


class FakePeer:
    """A real HTTP server on 127.0.0.1; ``respond(peer, handler, n)`` answers the n-th
    request (1-based). Records each request's path and authorization header.

    ``protocol``: an HTTP/1.0 answer (the default of ``http.server``) ends the connection
    with the response, so http.client hands the socket over to the response object; an
    HTTP/1.1 answer without ``Connection: close`` keeps it on the connection, as uvicorn."""

    def __init__(self, respond: Respond, protocol: str = "HTTP/1.0") -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        self.client_gone = threading.Event()
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def do_GET(self) -> None:
                with peer._lock:
                    peer.requests.append((self.path, self.headers.get("authorization")))
                    n = len(peer.requests)
                try:
                    respond(peer, self, n)
                except (BrokenPipeError, ConnectionResetError):
                    peer.client_gone.set()  # the client hung up: nothing more to send

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def send(handler: BaseHTTPRequestHandler, answer: Answer) -> None:
    handler.send_response(answer.status)
    for name, value in answer.headers.items():
        handler.send_header(name, value)
    handler.send_header("content-length", str(len(answer.body)))
    handler.send_header("connection", "close")
    handler.end_headers()
    body = answer.body if answer.cut_at is None else answer.body[: answer.cut_at]
    handler.wfile.write(body)
    handler.wfile.flush()
    handler.close_connection = True  # a cut body ends with the connection closed


def always(answer: Answer) -> Respond:
    return lambda _peer, handler, _n: send(handler, answer)


@pytest.fixture
def peers() -> Iterator[Callable[..., FakePeer]]:
    started: list[FakePeer] = []

    def start(respond: Respond, protocol: str = "HTTP/1.0") -> FakePeer:
        started.append(FakePeer(respond, protocol))
        return started[-1]

    yield start
    for peer in started:
        peer.close()


def bootstrap(
    urls: list[str], target: Path, staging_root: Path, limits: Limits, guard_s: float = 40
) -> Manifest:
    """Run a bootstrap, but never for longer than ``guard_s``: a broken deadline fails.

    Not ``asyncio.run``: that waits for every worker thread at the end, so a transfer
    thread left blocked on an abandoned peer would hang the test instead of failing it
    (the trickle test asserts on the abandoned connection itself)."""
    bootstrapper = Bootstrapper(FixedPeers(urls), None, TOKEN, staging_root, limits)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(
            asyncio.wait_for(bootstrapper.bootstrap(PARTITION, target, BEGIN, END), guard_s)
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()  # shuts the default executor down without waiting for its threads


def assert_installed(good: Good, target: Path, staging_root: Path) -> None:
    assert store_contents(target) == (good.items, GOOD_OFFSET, GOOD_INPUT)
    assert list(staging_root.iterdir()) == [], "staging left something behind"


# --- malformed answers ------------------------------------------------------------------


def bad_offset_header(good: Good, tmp: Path) -> Answer:
    return Answer(body=good.tar, headers={OFFSET_HEADER: "abc"})


def negative_size(good: Good, tmp: Path) -> Answer:
    header = negative_size_header("MANIFEST.json", -(1 << 20))
    decoded = tarfile.TarInfo.frombuf(header, "utf-8", "strict")  # accepted by tarfile
    assert decoded.name == "MANIFEST.json" and decoded.size == -(1 << 20)
    return Answer(body=header + good.manifest.to_json().ljust(512, b"\0") + b"\0" * 1024)


def server_error(good: Good, tmp: Path) -> Answer:
    return Answer(status=500, body=b"internal error", headers={})


def truncated(good: Good, tmp: Path) -> Answer:
    return Answer(body=good.tar, cut_at=len(good.tar) // 2)


def empty_far_future(good: Good, tmp: Path) -> Answer:
    far = 10**15
    manifest = dataclasses.replace(good.manifest, changelog_offset=far, files=())
    return Answer(body=archive_of(manifest, {}), headers={OFFSET_HEADER: str(far)})


def real_store_beyond_end(good: Good, tmp: Path) -> Answer:
    far = 10**15
    manifest, tar = checkpoint_tar(tmp / "far", items_for(10, b"far"), far, far)
    assert manifest.changelog_offset == far
    return Answer(body=tar, headers={OFFSET_HEADER: str(far)})


def garbage_rocksdb(good: Good, tmp: Path) -> Answer:
    files = {
        "000007.sst": os.urandom(8192),
        "CURRENT": b"MANIFEST-000001\n",
        "MANIFEST-000001": os.urandom(4096),
    }
    entries = tuple(FileEntry(name, len(data)) for name, data in files.items())
    manifest = dataclasses.replace(good.manifest, files=entries)
    return Answer(body=archive_of(manifest, files))


def offsets_altered(good: Good, tmp: Path) -> Answer:
    files = members_of(good.tar)
    del files["MANIFEST.json"], files["CHECKSUMS.json"]
    assert "CURRENT" in files and any(name.endswith(".sst") for name in files)
    manifest = dataclasses.replace(good.manifest, changelog_offset=GOOD_OFFSET - 10)
    return Answer(body=archive_of(manifest, files), headers={OFFSET_HEADER: str(GOOD_OFFSET - 10)})


def older_than_changelog(good: Good, tmp: Path) -> Answer:
    manifest, tar = checkpoint_tar(tmp / "old", items_for(10, b"old"), BEGIN - 15, 1)
    return Answer(body=tar, headers={OFFSET_HEADER: str(manifest.changelog_offset)})


def header_disagrees(good: Good, tmp: Path) -> Answer:
    return Answer(body=good.tar, headers={OFFSET_HEADER: str(GOOD_OFFSET - 1)})


MALFORMED = {
    "offset-header-not-an-integer": (bad_offset_header, r"not an offset"),
    "negative-member-size": (negative_size, r"negative"),
    "server-error": (server_error, r"answered 500"),
    "connection-closed-mid-body": (truncated, r"truncated"),
    "empty-archive-far-future": (empty_far_future, r"no CURRENT|beyond the changelog's end"),
    "store-beyond-changelog-end": (real_store_beyond_end, r"beyond the changelog's end"),
    "garbage-rocksdb-files": (garbage_rocksdb, r"does not open as a RocksDB store"),
    "manifest-offsets-altered": (offsets_altered, r"holds \(changelog, input, generation\)"),
    "older-than-changelog-start": (older_than_changelog, r"older than the changelog's first"),
    "header-disagrees-with-manifest": (header_disagrees, r"at the offset its header names"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_bad_peer_first_then_good_peer_installs_the_good_checkpoint(
    case: str, good: Good, tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"
    bad = peers(always(MALFORMED[case][0](good, tmp_path)))
    target_seen: list[bool] = []

    def respond_good(peer: FakePeer, handler: BaseHTTPRequestHandler, n: int) -> None:
        target_seen.append(target.exists())  # the bad answer is over by now
        send(handler, Answer(body=good.tar))

    good_peer = peers(respond_good)
    manifest = bootstrap(
        [bad.url, good_peer.url], target, staging_root, Limits(deadline_s=30, stall_window_s=5)
    )

    assert manifest == good.manifest
    assert len(bad.requests) == 1, "the bad peer, listed first, was not asked"
    assert good_peer.requests == [(REQUESTED_PATH, f"Bearer {TOKEN}")]
    assert target_seen == [False], "the bad answer created the target"
    assert_installed(good, target, staging_root)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_bad_peer_alone_leaves_the_existing_store_untouched(
    case: str, good: Good, tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"
    existing = PartitionStore(target, PARTITION)
    existing.write([(b"mine", b"untouched")], changelog_offset=7, input_offset=8)
    existing.close()
    before = tree_bytes(target)
    make_answer, reason = MALFORMED[case]
    bad = peers(always(make_answer(good, tmp_path)))

    started = time.monotonic()
    with pytest.raises(NoSourceError, match=reason) as raised:
        bootstrap([bad.url], target, staging_root, Limits(deadline_s=1, stall_window_s=5))

    assert time.monotonic() - started < 10
    assert raised.value.copy_exists  # an operator-named source is taken to hold a copy
    assert len(bad.requests) >= 1
    assert tree_bytes(target) == before, "a refused answer changed the existing store"
    assert store_contents(target) == ({b"mine": b"untouched"}, 7, 8)
    assert not staging_root.exists() or list(staging_root.iterdir()) == []


# --- slow and busy peers ----------------------------------------------------------------


# HTTP/1.0 (or Connection: close): http.client hands the socket over to the response.
@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/1.0"])
def test_a_trickling_peer_is_abandoned_for_the_next(
    protocol: str, good: Good, tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"

    def trickle(peer: FakePeer, handler: BaseHTTPRequestHandler, n: int) -> None:
        handler.send_response(200)
        handler.send_header(OFFSET_HEADER, str(GOOD_OFFSET))
        handler.send_header("content-length", str(len(good.tar)))
        handler.end_headers()
        handler.wfile.flush()
        for i in range(len(good.tar)):  # a byte a second: hours for the whole archive
            handler.wfile.write(good.tar[i : i + 1])
            if peer.stop.wait(1.0):
                return

    slow = peers(trickle, protocol)
    fast = peers(always(Answer(body=good.tar)))
    started = time.monotonic()
    manifest = bootstrap(
        [slow.url, fast.url],
        target,
        staging_root,
        Limits(deadline_s=30, min_bytes_per_s=1000, stall_window_s=2),
    )
    elapsed = time.monotonic() - started

    assert manifest == good.manifest
    # The stall is seen after one 2 s window (plus the watcher's 0.5 s tick): nowhere
    # near the trickle's end, nor the 30 s deadline a missed stall would run into.
    assert elapsed < 12, f"took {elapsed:.1f}s"
    assert len(slow.requests) == 1 and len(fast.requests) == 1
    assert_installed(good, target, staging_root)
    # The abandoned connection was closed (and the thread reading it woken): the
    # trickling peer's next write fails.
    wait_until(slow.client_gone.is_set, 8, "the abandoned connection to be closed")


def test_a_busy_peer_is_retried_with_backoff(
    good: Good, tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"

    def busy_twice(peer: FakePeer, handler: BaseHTTPRequestHandler, n: int) -> None:
        if n <= 2:
            send(handler, Answer(status=429, body=b"too many checkpoints streaming", headers={}))
        else:
            send(handler, Answer(body=good.tar))

    busy = peers(busy_twice)
    started = time.monotonic()
    manifest = bootstrap([busy.url], target, staging_root, Limits(deadline_s=20))
    elapsed = time.monotonic() - started

    assert manifest == good.manifest
    assert len(busy.requests) == 3
    # Two pauses of 0.5 s * 2^round, jittered down to half: at least 0.5 + 1 s.
    assert elapsed >= 1.4, f"retried without backing off ({elapsed:.2f}s)"
    assert_installed(good, target, staging_root)


def test_the_overall_deadline_ends_the_retries(
    tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"
    busy = peers(always(Answer(status=429, body=b"busy", headers={})))
    started = time.monotonic()
    with pytest.raises(NoSourceError, match=r"within 3s.*answered 429") as raised:
        bootstrap([busy.url], target, staging_root, Limits(deadline_s=3), guard_s=20)
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"the 3 s deadline took {elapsed:.1f}s"
    assert len(busy.requests) >= 2, "no retry before giving up"
    assert raised.value.copy_exists
    assert not target.exists()


def test_a_peer_that_holds_no_copy_ends_the_search_at_once(
    tmp_path: Path, peers: Callable[..., FakePeer]
) -> None:
    """A replica whose own store has a gap says so: with nobody else to ask, the bootstrap
    reports that no copy exists instead of waiting for one until its deadline."""
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"
    empty = peers(always(Answer(status=404, body=b"not held", headers={COPY_HEADER: "none"})))
    started = time.monotonic()
    with pytest.raises(NoSourceError, match="holds a copy") as raised:
        bootstrap([empty.url], target, staging_root, Limits(deadline_s=60), guard_s=20)
    assert time.monotonic() - started < 5
    assert len(empty.requests) == 1
    assert not raised.value.copy_exists


def test_a_peer_still_restoring_its_copy_is_waited_for(
    tmp_path: Path, good: Good, peers: Callable[..., FakePeer]
) -> None:
    target, staging_root = tmp_path / "stores" / "3", tmp_path / "incoming"

    def restoring_then_ready(peer: FakePeer, handler: BaseHTTPRequestHandler, n: int) -> None:
        if n == 1:
            send(handler, Answer(status=404, body=b"restoring", headers={COPY_HEADER: "usable"}))
        else:
            send(handler, Answer(body=good.tar))

    peer = peers(restoring_then_ready)
    manifest = bootstrap([peer.url], target, staging_root, Limits(deadline_s=20))
    assert manifest == good.manifest and len(peer.requests) == 2
    assert_installed(good, target, staging_root)


# --- the serving side -------------------------------------------------------------------


class StubEngine:
    """What ``internal_app`` uses of an Engine: its settings and its held stores."""

    def __init__(self, settings: EngineSettings, store: PartitionStore | None) -> None:
        self.settings = settings
        self.store = store
        self.generation = Generation(0, 6)

    def held_store(self, partition: int) -> PartitionStore | None:
        return self.store if partition == PARTITION else None


def engine_settings(data_dir: Path) -> EngineSettings:
    return EngineSettings(
        service="s",
        store="customer",
        data_dir=data_dir,
        internal_token=TOKEN,
        max_checkpoint_streams=2,
        checkpoint_send_timeout_s=2,
    )


@pytest.fixture
def big_store(tmp_path: Path) -> Iterator[tuple[PartitionStore, dict[bytes, bytes]]]:
    """~30 MB of incompressible values: far more than the socket buffers hold."""
    store = PartitionStore(tmp_path / "big", PARTITION)
    items = {b"key-%03d" % i: os.urandom(1 << 20) for i in range(30)}
    store.write(list(items.items()), changelog_offset=GOOD_OFFSET, input_offset=GOOD_INPUT)
    yield store, items
    store.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        wait_until(lambda: server.started, 20, "uvicorn to start")
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(15)


def stalled_reader(port: int) -> tuple[socket.socket, int]:
    """Ask for the checkpoint, read the response head and a few bytes, then stop reading.
    Returns the socket (kept open) and the Content-Length announced."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {CHECKPOINT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {received!r}"
        received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    lengths = [
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    ]
    assert lengths and lengths[0] > 25 << 20, head
    return sock, lengths[0]


def drain(sock: socket.socket) -> int:
    """Read what is left until the server closes the connection; the number of bytes."""
    total = 0
    sock.settimeout(20)
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def fetch(url: str) -> tuple[int, httpx.Headers, bytes]:
    with httpx.stream(
        "GET", url + CHECKPOINT_PATH, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as response:
        return response.status_code, response.headers, b"".join(response.iter_raw())


def test_stalled_readers_are_cut_off_and_free_their_stream_slots(
    big_store: tuple[PartitionStore, dict[bytes, bytes]],
    tmp_path: Path,
    serve: Callable[[Any], str],
) -> None:
    store, items = big_store
    data_dir = tmp_path / "node"
    workdir = data_dir / "checkpoints"
    url = serve(internal_app(StubEngine(engine_settings(data_dir), store)))  # type: ignore[arg-type]
    port = int(url.rsplit(":", 1)[1])

    stalled = [stalled_reader(port), stalled_reader(port)]
    try:
        # Both slots are held by readers that stopped reading: a third peer is turned away.
        status, _, body = fetch(url)
        assert status == 429, body[:200]
        assert len(list(workdir.iterdir())) == 2

        # Within the send timeout (2 s) both are cut off and their slots freed.
        def served() -> tuple[httpx.Headers, bytes] | None:
            status, headers, body = fetch(url)
            if status == 429:
                return None
            assert status == 200, body[:200]
            return headers, body

        headers, body = wait_until(served, 20, "a third peer to be served", every=0.2)
        assert len(body) == int(headers["content-length"])
        manifest = asyncio.run(
            receive_checkpoint(io.BytesIO(body), tmp_path / "copy" / "3", tmp_path / "incoming")
        )
        assert int(headers[OFFSET_HEADER]) == manifest.changelog_offset == GOOD_OFFSET
        assert store_contents(tmp_path / "copy" / "3") == (items, GOOD_OFFSET, GOOD_INPUT)

        # Every checkpoint directory is gone: the two cut off and the one served.
        wait_until(lambda: list(workdir.iterdir()) == [], 20, "checkpoint dirs to be removed")

        # The stalled connections were dropped before their archive was complete.
        for sock, length in stalled:
            assert drain(sock) < length
    finally:
        for sock, _ in stalled:
            sock.close()

    # With the slots free, the real client installs from the real server.
    target = tmp_path / "stores" / "3"
    bootstrap([url], target, tmp_path / "incoming", Limits(deadline_s=30, stall_window_s=5))
    assert store_contents(target) == (items, GOOD_OFFSET, GOOD_INPUT)
    wait_until(lambda: list(workdir.iterdir()) == [], 20, "checkpoint dir to be removed")


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger", "/schema/openapi.json"])
def test_the_internal_app_serves_no_schema(path: str, tmp_path: Path) -> None:
    app = internal_app(StubEngine(engine_settings(tmp_path), None))  # type: ignore[arg-type]
    with TestClient(app) as client:
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert client.get(path).status_code == 404
        assert client.get(path, headers=auth).status_code == 404
        # The client reaches the app: its guarded route answers, without a token with 401.
        assert client.get(CHECKPOINT_PATH).status_code == 401
