"""Cold bootstrap's checkpoint archive: consistent, streamed, and unpacked only when safe.

Invariant 3 (DESIGN.md): a checkpoint's data and offsets come from one RocksDB checkpoint.
Invariant 6: a tar from a peer is unpacked only after its paths and sizes are checked;
a refused archive leaves nothing on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path

import msgspec
import pytest
import rocksdict
import xxhash

from backbone.dev.cluster import wait_until
from backbone.snapshot import (
    CheckpointStream,
    Checksums,
    FileEntry,
    Manifest,
    ManifestError,
    NoSpaceError,
    UnsafeArchiveError,
    create_checkpoint,
    receive_checkpoint,
    stream_checkpoint,
)
from backbone.snapshot import checkpoint as checkpoint_module
from backbone.snapshot.archive import padding, tar_header
from backbone.store import Meta, PartitionStore

# --- helpers ---------------------------------------------------------------------------


class Trickle:
    """A source that hands out ``data`` in pieces of an awkward size, so headers straddle
    reads; at the end it calls ``then`` (which may block or raise) before reporting EOF."""

    def __init__(
        self, data: bytes, size: int = 700, then: Callable[[], None] | None = None
    ) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._size = size
        self._then = then

    def readinto(self, buffer: memoryview) -> int:
        if self._pos == len(self._data):
            if self._then is not None:
                self._then()
            return 0
        n = min(len(buffer), self._size, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def entry(name: str, data: bytes) -> FileEntry:
    return FileEntry(name=name, size=len(data))


def digest(data: bytes) -> str:
    """Computed here with xxhash directly, independently of the engine's hashing code."""
    return xxhash.xxh3_128(data).hexdigest()


def manifest_of(files: dict[str, bytes], **overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "version": 2,
        "partition": 3,
        "generation": 0,
        "changelog_offset": 10,
        "input_offset": 20,
        "files": tuple(entry(name, data) for name, data in files.items()),
    }
    fields.update(overrides)
    return Manifest(**fields)


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs: object):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def manifest_member(manifest: Manifest | bytes) -> tuple[tarfile.TarInfo, bytes]:
    body = manifest if isinstance(manifest, bytes) else manifest.to_json()
    return member("MANIFEST.json", body)


def checksums_member(
    files: dict[str, bytes] | bytes,
) -> tuple[tarfile.TarInfo, bytes]:
    if isinstance(files, bytes):
        return member("CHECKSUMS.json", files)
    body = msgspec.json.encode({"files": {name: digest(data) for name, data in files.items()}})
    return member("CHECKSUMS.json", body)


FILES = {"000009.sst": b"s" * 3000, "CURRENT": b"MANIFEST-000005\n", "000008.log": b""}
GOOD = manifest_of(FILES)


def good_tar() -> bytes:
    return make_tar(
        manifest_member(GOOD),
        *(member(name, data) for name, data in FILES.items()),
        checksums_member(FILES),
    )


def leftovers(*roots: Path) -> list[Path]:
    return [path for root in roots if root.exists() for path in root.rglob("*")]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(target, staging_root); the target does not exist yet."""
    return tmp_path / "stores" / "agg" / "3", tmp_path / "staging"


def receive(data: bytes, dirs: tuple[Path, Path], **kwargs: object) -> Manifest:
    target, staging_root = dirs
    return asyncio.run(receive_checkpoint(Trickle(data), target, staging_root, **kwargs))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    store = PartitionStore(tmp_path / "live", 3)
    store.write(
        [(b"customer-%05d" % i, b"state-%d" % i * 3) for i in range(5000)],
        changelog_offset=5000,
        input_offset=7000,
        generation=2,
    )
    store.write([(b"customer-00007", None)], changelog_offset=5001, input_offset=7001)
    yield store
    store.close()


def contents(path: Path) -> tuple[dict[bytes, bytes], Meta]:
    store = PartitionStore(path, 3)
    try:
        return dict(store.items()), store.meta()
    finally:
        store.close()


# --- manifest ---------------------------------------------------------------------------


def test_manifest_round_trips_through_json() -> None:
    assert Manifest.from_json(GOOD.to_json()) == GOOD
    assert GOOD.total_bytes() == sum(len(data) for data in FILES.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 1}, "unsupported manifest version 1"),
        ({"version": "2"}, "not valid JSON with a version"),
        ({"partition": -1}, "partition is negative"),
        ({"files": [{"name": "../x", "size": 1}]}, "parent directory"),
        ({"files": [{"name": "a\u0000b", "size": 1}]}, "NUL"),
        ({"files": [{"name": "CHECKSUMS.json", "size": 1}]}, "reserved name"),
        ({"files": [{"name": "x", "size": -1}]}, "negative"),
        ({"files": [{"name": "x", "size": 1}] * 2}, "twice"),
        ({"files": "nope"}, "invalid manifest"),
        ({"checksum": "sha256"}, "unsupported checksum 'sha256'"),
    ],
)
def test_manifest_rejects(change: dict[str, object], message: str) -> None:
    raw = msgspec.json.decode(GOOD.to_json())
    raw.update(change)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(msgspec.json.encode(raw))


# --- checkpoint and round trip ------------------------------------------------------------


def test_checkpoint_offsets_come_from_the_checkpoint(store: PartitionStore, tmp_path: Path) -> None:
    directory, manifest = create_checkpoint(store, tmp_path / "work")
    store.write([(b"later", b"x")], changelog_offset=9999, input_offset=9999, generation=3)
    assert (manifest.changelog_offset, manifest.input_offset, manifest.generation) == (
        5001,
        7001,
        2,
    )
    assert manifest.partition == 3
    assert sorted(f.name for f in manifest.files) == sorted(p.name for p in directory.iterdir())
    for file in manifest.files:
        assert (directory / file.name).stat().st_size == file.size


def test_offsets_are_read_from_the_checkpoint_not_the_live_store(
    store: PartitionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that lands between the RocksDB checkpoint and the offset read must not show."""

    class RacingCheckpoint:
        def __init__(self, db: rocksdict.Rdict) -> None:
            self._real = rocksdict.Checkpoint(db)

        def create_checkpoint(self, path: str) -> None:
            self._real.create_checkpoint(path)
            store.write([(b"racing", b"x")], changelog_offset=9999, input_offset=9999)

    monkeypatch.setattr(checkpoint_module, "Checkpoint", RacingCheckpoint)
    directory, manifest = create_checkpoint(store, tmp_path / "work")
    assert store.meta().changelog_offset == 9999
    assert (manifest.changelog_offset, manifest.input_offset) == (5001, 7001)
    items, meta = contents(directory)
    assert b"racing" not in items and meta.changelog_offset == 5001


def test_round_trip_installs_the_state_as_of_the_checkpoint(
    store: PartitionStore, tmp_path: Path
) -> None:
    before = (dict(store.items()), store.meta())
    assert len(before[0]) == 4999
    workdir, target, staging_root = tmp_path / "work", tmp_path / "new" / "3", tmp_path / "in"
    progress: list[tuple[int, int]] = []

    async def run() -> Manifest:
        manifest, chunks = await stream_checkpoint(store, workdir, chunk_size=4096)
        # The live store moves on after the checkpoint: none of it may reach the copy.
        store.write(
            [(b"customer-00001", b"changed"), (b"new", b"x")],
            changelog_offset=6000,
            input_offset=8000,
        )
        installed = await receive_checkpoint(
            io.BytesIO(await collect(chunks)),
            target,
            staging_root,
            lambda r, t: progress.append((r, t)),
        )
        assert installed == manifest
        return manifest

    manifest = asyncio.run(run())
    assert (manifest.changelog_offset, manifest.input_offset, manifest.generation) == (
        5001,
        7001,
        2,
    )
    assert contents(target) == before
    assert store.meta().changelog_offset == 6000
    assert leftovers(workdir, staging_root) == []
    total = manifest.total_bytes()
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert [r for r, _ in progress] == sorted(r for r, _ in progress)


def test_archive_layout(store: PartitionStore, tmp_path: Path) -> None:
    async def run() -> tuple[Manifest, bytes]:
        manifest, chunks = await stream_checkpoint(store, tmp_path / "work")
        data = await collect(chunks)
        assert len(data) == chunks.size
        return manifest, data

    manifest, data = asyncio.run(run())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        assert members[0].name == "MANIFEST.json"
        assert Manifest.from_json(tar.extractfile(members[0]).read()) == manifest
        assert [m.name for m in members[1:-1]] == [f.name for f in manifest.files]
        assert members[-1].name == "CHECKSUMS.json"
        sent = {m.name: digest(tar.extractfile(m).read()) for m in members[1:-1]}
        checksums = Checksums.from_json(tar.extractfile(members[-1]).read(), manifest)
        assert checksums.files == sent
        for info in members:
            assert info.isreg() and "/" not in info.name
            assert (info.mode, info.mtime, info.uid, info.gid) == (0o644, 0, 0, 0)


def test_replaces_an_existing_target_and_keeps_it_on_failure(dirs: tuple[Path, Path]) -> None:
    target, staging_root = dirs
    target.mkdir(parents=True)
    (target / "OLD").write_bytes(b"old state")
    with pytest.raises(UnsafeArchiveError):
        receive(good_tar()[:2000], dirs)
    assert [p.name for p in target.iterdir()] == ["OLD"]
    assert receive(good_tar(), dirs) == GOOD
    assert {p.name: p.read_bytes() for p in target.iterdir()} == FILES
    assert leftovers(staging_root) == []


def test_check_manifest_refuses_before_any_file_is_received(dirs: tuple[Path, Path]) -> None:
    def wrong_partition(manifest: Manifest) -> None:
        raise UnsafeArchiveError(f"partition {manifest.partition}, wanted 4")

    with pytest.raises(UnsafeArchiveError, match="wanted 4"):
        receive(good_tar(), dirs, check_manifest=wrong_partition)
    assert leftovers(*dirs) == []


def test_a_checkpoint_larger_than_the_free_disk_is_refused_up_front(
    dirs: tuple[Path, Path],
) -> None:
    huge = dataclasses.replace(GOOD, files=(FileEntry(name="000009.sst", size=1 << 60),))
    data = make_tar(manifest_member(huge), member("000009.sst", SST))
    with pytest.raises(NoSpaceError, match=f"needs {1 << 60} bytes and only .* free"):
        receive(data, dirs)
    assert not dirs[0].exists() and leftovers(dirs[1]) == []


# --- unsafe archives ----------------------------------------------------------------------

SST = FILES["000009.sst"]
REST = [member("CURRENT", FILES["CURRENT"]), member("000008.log")]


def unsafe_cases() -> Iterator[tuple[str, bytes, str]]:
    def with_files(
        *files: tuple[tarfile.TarInfo, bytes],
        manifest: Manifest = GOOD,
        checksums: dict[str, bytes] | bytes | None = FILES,
    ) -> bytes:
        trailer = [] if checksums is None else [checksums_member(checksums)]
        return make_tar(manifest_member(manifest), *files, *trailer)

    ALL = [member(name, data) for name, data in FILES.items()]

    def extra(name: str) -> Manifest:
        return manifest_of({**FILES, name: b"x"})

    yield "parent", with_files(member("../x", b"x"), manifest=extra("x")), "parent directory"
    yield "absolute", with_files(member("/etc/x", b"x")), "absolute path"
    yield "subdir", with_files(member("a/x", b"x")), "contains '/'"
    yield "backslash", with_files(member("..\\x", b"x")), "backslash"
    yield "dotfile", with_files(member(".hidden", b"x")), "A-Za-z0-9"
    yield "second manifest", with_files(manifest_member(GOOD)), "reserved name"
    yield (
        "symlink",
        with_files(member("000009.sst", kind=tarfile.SYMTYPE, linkname="/etc/passwd")),
        "symbolic link",
    )
    yield (
        "hardlink",
        with_files(member("000009.sst", kind=tarfile.LNKTYPE, linkname="CURRENT")),
        "hard link",
    )
    yield "chardev", with_files(member("000009.sst", kind=tarfile.CHRTYPE)), "character device"
    yield "blockdev", with_files(member("000009.sst", kind=tarfile.BLKTYPE)), "block device"
    yield "fifo", with_files(member("000009.sst", kind=tarfile.FIFOTYPE)), "fifo"
    yield "directory", with_files(member("000009.sst", kind=tarfile.DIRTYPE)), "directory"
    yield "sparse", with_files(member("000009.sst", kind=tarfile.GNUTYPE_SPARSE)), "sparse"
    # A name over 100 characters makes tarfile emit a pax header that renames the next member.
    body = GOOD.to_json()
    long_info = tarfile.TarInfo("x" * 150)
    long_info.size = 1
    long_name = b"".join(
        [
            tar_header("MANIFEST.json", len(body)),
            body,
            padding(len(body)),
            long_info.tobuf(format=tarfile.PAX_FORMAT),
            b"x",
            padding(1),
            bytes(1024),
        ]
    )
    yield "pax header", long_name, "pax extended header"
    yield (
        "not listed",
        with_files(member("000010.sst", b"x"), member("000009.sst", SST)),
        ("not listed in the manifest"),
    )
    yield "duplicate", with_files(member("000009.sst", SST), member("000009.sst", SST)), "twice"
    yield "size", with_files(member("000009.sst", SST + b"!"), *REST), "3001 bytes.*says 3000"
    yield (
        "checksum",
        with_files(member("000009.sst", b"t" * 3000), *REST),
        "'000009.sst' has xxh3_128 .*CHECKSUMS.json says",
    )
    yield "no checksums", with_files(*ALL, checksums=None), "without CHECKSUMS.json"
    yield (
        "checksums of other files",
        with_files(*ALL, checksums={**FILES, "000010.sst": b"x"}),
        "CHECKSUMS.json names",
    )
    bad_digest = msgspec.json.encode({"files": {name: "0" * 64 for name in FILES}})
    yield "digest length", with_files(*ALL, checksums=bad_digest), "not 32 hex digits"
    yield "garbage checksums", with_files(*ALL, checksums=b"[1, 2"), "invalid CHECKSUMS.json"
    yield (
        "member after checksums",
        make_tar(manifest_member(GOOD), *ALL, checksums_member(FILES), member("000010.sst")),
        "goes on after CHECKSUMS.json",
    )
    yield "missing file", with_files(member("000009.sst", SST), REST[0]), "without 000008.log"
    yield "empty stream", b"", "empty"
    yield "only end marker", bytes(1024), "empty"
    yield "no manifest", make_tar(member("000009.sst", SST)), "first member is '000009.sst'"
    yield (
        "manifest not first",
        make_tar(member("000009.sst", SST), manifest_member(GOOD), *REST),
        "first member",
    )
    yield "garbage manifest", make_tar(manifest_member(b"\x00garbage")), "not valid JSON"
    yield (
        "manifest version",
        make_tar(manifest_member(msgspec.json.encode({"version": 9}))),
        "unsupported manifest version 9",
    )
    huge = tarfile.TarInfo("MANIFEST.json")
    huge.size = 2 << 20
    yield "huge manifest", huge.tobuf(format=tarfile.USTAR_FORMAT), "more than 1048576"
    yield "manifest is a link", make_tar(member("MANIFEST.json", kind=tarfile.SYMTYPE)), "link"
    yield "corrupt header", good_tar()[:1024] + b"\x01" * 512, "corrupt tar header at byte 1024"


UNSAFE = list(unsafe_cases())


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in UNSAFE], ids=[c[0] for c in UNSAFE])
def test_unsafe_archive_is_refused_and_leaves_nothing(
    data: bytes, message: str, dirs: tuple[Path, Path]
) -> None:
    with pytest.raises(UnsafeArchiveError, match=message):
        receive(data, dirs)
    target, staging_root = dirs
    assert not target.exists()
    assert leftovers(staging_root) == []


def test_truncated_stream_is_refused_at_every_cut(dirs: tuple[Path, Path]) -> None:
    data = good_tar()
    # The archive proper ends with the first end-of-archive block: tarfile pads past it.
    body = len(GOOD.to_json())
    trailer = len(checksums_member(FILES)[1])
    blocks = [body, *(len(data) for data in FILES.values()), trailer]
    end = sum(512 + -(-size // 512) * 512 for size in blocks) + 512
    assert data[end - 512 : end] == bytes(512) and data[end - 1024 : end - 512] != bytes(512)
    for cut in [*range(0, end, 97), end - 512, end - 1]:
        with pytest.raises(UnsafeArchiveError, match=r"truncated|empty"):
            receive(data[:cut], dirs)
        assert not dirs[0].exists() and leftovers(dirs[1]) == []
    assert receive(data[:end], dirs) == GOOD


def test_error_in_the_source_stream_leaves_nothing(dirs: tuple[Path, Path]) -> None:
    def peer_goes_away() -> None:
        raise ConnectionResetError("peer went away")

    target, staging_root = dirs
    source = Trickle(good_tar()[:3000], then=peer_goes_away)
    with pytest.raises(ConnectionResetError):
        asyncio.run(receive_checkpoint(source, target, staging_root))
    assert not target.exists() and leftovers(staging_root) == []


def test_cancelled_receive_leaves_nothing(dirs: tuple[Path, Path]) -> None:
    asked_again = threading.Event()
    closed = threading.Event()

    def stalls() -> None:
        asked_again.set()  # the receiver took the first 3000 bytes and wants more
        closed.wait(30)  # a peer that sends nothing more until the connection is closed
        raise ConnectionAbortedError("closed")

    target, staging_root = dirs
    source = Trickle(good_tar()[:3000], then=stalls)

    async def run() -> None:
        task = asyncio.create_task(receive_checkpoint(source, target, staging_root))
        assert await asyncio.to_thread(asked_again.wait, 30)

        def half_written() -> list[str]:  # the writer thread creates the file
            return [p.name for p in leftovers(staging_root) if p.is_file()]

        assert await asyncio.to_thread(wait_until, half_written, 30) == ["000009.sst"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not target.exists() and leftovers(staging_root) == []
        closed.set()  # as the bootstrapper closes the connection: the reader thread ends

    asyncio.run(run())
    assert not target.exists() and leftovers(staging_root) == []


# --- server-side cleanup ------------------------------------------------------------------


def stream_then(
    store: PartitionStore,
    workdir: Path,
    consume: Callable[[CheckpointStream], Coroutine[object, object, object]],
) -> None:
    async def run() -> None:
        _, chunks = await stream_checkpoint(store, workdir, chunk_size=1024)
        assert len(list(workdir.iterdir())) == 1
        await consume(chunks)

    asyncio.run(run())
    assert list(workdir.iterdir()) == []


def test_checkpoint_removed_after_full_stream(store: PartitionStore, tmp_path: Path) -> None:
    stream_then(store, tmp_path / "work", collect)


def test_checkpoint_removed_when_closed_after_first_chunk(
    store: PartitionStore, tmp_path: Path
) -> None:
    async def first_then_close(chunks: CheckpointStream) -> None:
        assert (await anext(chunks)).startswith(b"MANIFEST.json")
        await chunks.aclose()

    stream_then(store, tmp_path / "work", first_then_close)


def test_checkpoint_removed_when_closed_before_first_chunk(
    store: PartitionStore, tmp_path: Path
) -> None:
    async def close(chunks: CheckpointStream) -> None:
        await chunks.aclose()

    stream_then(store, tmp_path / "work", close)


def test_checkpoint_removed_when_consumer_is_cancelled(
    store: PartitionStore, tmp_path: Path
) -> None:
    async def cancelled_mid_read(chunks: CheckpointStream) -> None:
        reading = asyncio.Event()

        async def read() -> None:
            async for _ in chunks:
                reading.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(reading.wait(), 30)  # cancel while the stream is mid-way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # No aclose(): the cancellation itself went through the generator's finally.

    stream_then(store, tmp_path / "work", cancelled_mid_read)


def test_checkpoint_removed_when_reader_stalls_and_server_closes(
    store: PartitionStore, tmp_path: Path
) -> None:
    async def stalled(chunks: CheckpointStream) -> None:
        got_one = asyncio.Event()

        async def read() -> None:
            async for _ in chunks:
                got_one.set()
                await asyncio.Event().wait()  # a client that stopped reading

        task = asyncio.create_task(read())
        await asyncio.wait_for(got_one.wait(), 30)
        task.cancel()  # lands in the reader, outside the generator: aclose() cleans up
        with pytest.raises(asyncio.CancelledError):
            await task
        await chunks.aclose()

    stream_then(store, tmp_path / "work", stalled)


def test_checkpoint_removed_when_stream_is_dropped(store: PartitionStore, tmp_path: Path) -> None:
    workdir = tmp_path / "work"

    async def run() -> None:
        _, chunks = await stream_checkpoint(store, workdir)
        assert len(list(workdir.iterdir())) == 1
        del chunks  # never iterated, never closed

    asyncio.run(run())
    assert list(workdir.iterdir()) == []
