"""Server side of cold bootstrap: a checkpoint streamed as an uncompressed POSIX tar.

The tar is built by hand from ``TarInfo.tobuf()`` headers, file bytes and padding, so it
is produced as the client reads it: never whole in memory or on disk. No compression:
RocksDB files are compressed already.
"""

from __future__ import annotations

import asyncio
import shutil
import tarfile
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import xxhash

from backbone.snapshot.checkpoint import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    Checksums,
    Manifest,
    create_checkpoint,
    file_hasher,
)
from backbone.store.partition_store import PartitionStore

BLOCK = tarfile.BLOCKSIZE  # 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file with neutral metadata (0644, mtime 0, uid/gid 0)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # Plain ustar: the receiver accepts no pax or GNU extension headers. It limits a member
    # to 8 GiB (tobuf raises beyond), far above RocksDB's default 64 MiB SST files.
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def _member(name: str, body: bytes) -> bytes:
    return tar_header(name, len(body)) + body + padding(len(body))


def archive_size(manifest: Manifest) -> int:
    """The archive's exact length: the digests are fixed-width, so the checksums member's
    length is known before a file is read."""
    placeholder = Checksums({entry.name: "0" * 32 for entry in manifest.files}).to_json()
    members = [len(manifest.to_json()), *(entry.size for entry in manifest.files), len(placeholder)]
    return sum(BLOCK + size + -size % BLOCK for size in members) + len(END_OF_ARCHIVE)


class CheckpointStream(AsyncIterator[bytes]):
    """The tar bytes of one checkpoint; removes the checkpoint directory when it ends.

    A plain async generator runs its ``finally`` only once it has started, so a stream that
    is dropped or closed before its first chunk would leak the directory: this wrapper
    removes it on ``aclose()`` and, as a last resort, when it is garbage-collected.
    """

    def __init__(self, directory: Path, manifest: Manifest, chunk_size: int) -> None:
        self.directory = directory
        self.size = archive_size(manifest)  # known up front: sent as Content-Length
        self._remove = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self._chunks = _tar_chunks(directory, manifest, chunk_size, self._remove)

    def __aiter__(self) -> CheckpointStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._remove()


async def stream_checkpoint(
    store: PartitionStore, workdir: Path, chunk_size: int = 1 << 20
) -> tuple[Manifest, CheckpointStream]:
    """Checkpoint ``store`` under ``workdir`` and return its manifest and its tar stream.

    Iterate the stream to the end or ``aclose()`` it: either removes the checkpoint.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    directory, manifest = await asyncio.to_thread(create_checkpoint, store, workdir)
    return manifest, CheckpointStream(directory, manifest, chunk_size)


async def _tar_chunks(
    directory: Path, manifest: Manifest, chunk_size: int, remove: Callable[[], object]
) -> AsyncGenerator[bytes, None]:
    try:
        yield _member(MANIFEST_NAME, manifest.to_json())
        digests: dict[str, str] = {}
        for entry in manifest.files:
            yield tar_header(entry.name, entry.size)
            hasher = file_hasher()
            # Buffered file: its lock makes close() wait for a read still running in a
            # worker thread when the stream is cancelled mid-read.
            with (directory / entry.name).open("rb") as file:
                remaining = entry.size
                while remaining:
                    data = await asyncio.to_thread(
                        _read_hashed, file, hasher, min(chunk_size, remaining)
                    )
                    if not data:
                        raise RuntimeError(f"checkpoint file {entry.name} shrank while sent")
                    remaining -= len(data)
                    yield data
            yield padding(entry.size)
            digests[entry.name] = hasher.hexdigest()
        yield _member(CHECKSUMS_NAME, Checksums(digests).to_json()) + END_OF_ARCHIVE
    finally:
        # Runs on exhaustion, error, aclose() and cancellation alike.
        remove()


def _read_hashed(file: BinaryIO, hasher: xxhash.xxh3_128, size: int) -> bytes:
    data = file.read(size)
    hasher.update(data)
    return data
