"""Client side of cold bootstrap: receive a checkpoint tar from a peer and install it.

The peer is not trusted (DESIGN.md invariant 6): every tar header is checked against the
manifest before a byte of its member is written, every file is hashed as it is written and
compared with the checksums that close the archive, and nothing reaches ``target`` unless
the whole archive checked out. The parser is our
own and accepts plain ustar regular files only, so no tar feature (links, devices, pax
or GNU long-name headers, sparse files) can be turned against us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tarfile
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from backbone.snapshot.checkpoint import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    Checksums,
    Manifest,
    ManifestError,
    file_hasher,
    name_problem,
)

BLOCK = tarfile.BLOCKSIZE
MAX_MANIFEST_BYTES = 1 << 20
# Bytes handed to a worker thread per write: bounds memory and thread hops alike.
WRITE_SIZE = 1 << 20

_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.XHDTYPE: "a pax extended header",
    tarfile.XGLTYPE: "a pax global header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link header",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
}


class UnsafeArchiveError(ValueError):
    """The archive from a peer failed a check; the message says which and where."""


class NoSpaceError(OSError):
    """The checkpoint would not fit on this node's disk."""


async def receive_checkpoint(
    chunks: AsyncIterator[bytes],
    target: Path,
    staging_root: Path,
    on_progress: Callable[[int, int], None] | None = None,
    check_manifest: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Unpack the tar in ``chunks`` into ``target``, replacing what is there.

    The files are written to a fresh directory under ``staging_root`` (which must be on
    the filesystem of ``target``) and renamed into place once all checks passed; on any
    failure the staging directory is removed and ``target`` is left as it was.
    ``on_progress(received, total)`` counts file bytes against the manifest's total.
    ``check_manifest`` sees the manifest before any file is received and may raise to
    refuse it (wrong partition or generation, a gap before the changelog's first offset).
    """
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = _Staging(Path(tempfile.mkdtemp(prefix="incoming-", dir=staging_root)))
    try:
        manifest = await _receive(_Reader(chunks), staging, on_progress, check_manifest)
        await asyncio.to_thread(staging.publish, target, staging_root)
    except BaseException:
        # Also on cancellation: discard() waits for the worker thread's step in flight. If
        # that step was publish(), target holds the complete new state and this is a no-op.
        staging.discard()
        raise
    return manifest


async def _receive(
    reader: _Reader,
    staging: _Staging,
    on_progress: Callable[[int, int], None] | None,
    check_manifest: Callable[[Manifest], None] | None,
) -> Manifest:
    manifest = await _read_manifest(reader)
    if check_manifest is not None:
        check_manifest(manifest)
    expected = {entry.name: entry for entry in manifest.files}
    total = manifest.total_bytes()
    free = shutil.disk_usage(staging.path).free
    if total > free:
        raise NoSpaceError(
            f"the checkpoint of partition {manifest.partition} needs {total} bytes and only "
            f"{free} are free under {staging.path.parent}: free disk space or grow the volume"
        )
    received = 0
    if on_progress is not None:
        on_progress(received, total)
    digests: dict[str, str] = {}
    while (info := await _next_header(reader)) is not None and info.name != CHECKSUMS_NAME:
        name = info.name
        _check_regular(info)
        problem = name_problem(name)
        if problem:
            raise UnsafeArchiveError(f"member {name!r} {problem}")
        entry = expected.get(name)
        if entry is None:
            raise UnsafeArchiveError(f"member {name!r} is not listed in the manifest")
        if name in digests:
            raise UnsafeArchiveError(f"member {name!r} appears twice")
        if info.size != entry.size:
            raise UnsafeArchiveError(
                f"member {name!r} is {info.size} bytes, the manifest says {entry.size}"
            )
        await asyncio.to_thread(staging.create, name)
        remaining = info.size
        while remaining:
            data = await reader.read(min(remaining, WRITE_SIZE), what=f"member {name!r}")
            await asyncio.to_thread(staging.write, data)
            remaining -= len(data)
            received += len(data)
            if on_progress is not None:
                on_progress(received, total)
        digests[name] = await asyncio.to_thread(staging.finish)
        await reader.read(-info.size % BLOCK, what=f"padding of {name!r}")
    missing = sorted(expected.keys() - digests.keys())
    if missing:
        raise UnsafeArchiveError(f"archive ended without {', '.join(missing)}")
    if info is None:
        raise UnsafeArchiveError(f"archive ended without {CHECKSUMS_NAME}")
    checksums = await _read_checksums(reader, info, manifest)
    for name, digest in digests.items():
        if digest != checksums.files[name]:
            raise UnsafeArchiveError(
                f"member {name!r} has {manifest.checksum} {digest}, "
                f"{CHECKSUMS_NAME} says {checksums.files[name]}"
            )
    if await _next_header(reader) is not None:
        raise UnsafeArchiveError(f"archive goes on after {CHECKSUMS_NAME}")
    if received != total:  # implied by the checks above; kept as the last word
        raise UnsafeArchiveError(f"received {received} bytes, the manifest says {total}")
    return manifest


async def _read_manifest(reader: _Reader) -> Manifest:
    info = await _next_header(reader)
    if info is None:
        raise UnsafeArchiveError(f"archive is empty: {MANIFEST_NAME} missing")
    if info.name != MANIFEST_NAME:
        raise UnsafeArchiveError(f"first member is {info.name!r}, not {MANIFEST_NAME}")
    body = await _read_small(reader, info)
    try:
        return Manifest.from_json(body)
    except ManifestError as exc:
        raise UnsafeArchiveError(f"{MANIFEST_NAME}: {exc}") from exc


async def _read_checksums(reader: _Reader, info: tarfile.TarInfo, manifest: Manifest) -> Checksums:
    body = await _read_small(reader, info)
    try:
        return Checksums.from_json(body, manifest)
    except ManifestError as exc:
        raise UnsafeArchiveError(str(exc)) from exc


async def _read_small(reader: _Reader, info: tarfile.TarInfo) -> bytes:
    """The body of a JSON member, which is read into memory, so it is bounded."""
    _check_regular(info)
    if info.size > MAX_MANIFEST_BYTES:
        raise UnsafeArchiveError(
            f"{info.name} is {info.size} bytes, more than {MAX_MANIFEST_BYTES}"
        )
    body = await reader.read(info.size, what=info.name)
    await reader.read(-info.size % BLOCK, what=f"padding of {info.name}")
    return body


async def _next_header(reader: _Reader) -> tarfile.TarInfo | None:
    """The next member's header, or None at the end-of-archive (zero) block."""
    offset = reader.offset
    block = await reader.read(BLOCK, what="tar header (no end-of-archive marker)")
    if block == bytes(BLOCK):
        return None
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError) as exc:
        raise UnsafeArchiveError(f"corrupt tar header at byte {offset}: {exc}") from exc


def _check_regular(info: tarfile.TarInfo) -> None:
    # Exactly REGTYPE/AREGTYPE: TarInfo.isreg() would also accept sparse and contiguous files.
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _TYPE_NAMES.get(info.type, f"of type {info.type!r}")
        raise UnsafeArchiveError(f"member {info.name!r} is {kind}: only regular files allowed")


class _Reader:
    """Exact-size reads over an async iterator of arbitrarily sized chunks."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = b""
        self._pos = 0
        self.offset = 0  # bytes consumed so far, for error messages

    async def read(self, size: int, *, what: str) -> bytes:
        parts: list[bytes] = []
        needed = size
        while needed:
            if self._pos == len(self._chunk):
                try:
                    self._chunk = bytes(await anext(self._chunks))
                except StopAsyncIteration:
                    at = self.offset + size - needed
                    if at == 0:
                        raise UnsafeArchiveError("archive is empty: no bytes received") from None
                    raise UnsafeArchiveError(
                        f"archive truncated at byte {at} while reading {what}"
                    ) from None
                self._pos = 0
                continue
            part = self._chunk[self._pos : self._pos + needed]
            self._pos += len(part)
            needed -= len(part)
            parts.append(part)
        self.offset += size
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Staging:
    """The staging directory and the file being written into it.

    Its blocking methods run in worker threads; the lock lets ``discard()`` (called from
    the event loop on failure or cancellation) wait for a write still in flight instead of
    racing it, so no file can appear after the directory is gone. Finished files are
    fsynced by one more thread while the next file arrives; ``publish()`` waits for them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._hash = file_hasher()
        self._discarded = False
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-fsync")
        self._synced: list[Future[None]] = []

    def create(self, name: str) -> None:
        with self._lock:
            self._check_open()
            # O_EXCL and O_NOFOLLOW: never write through anything already there.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._file = os.fdopen(os.open(self.path / name, flags, 0o644), "wb")
            self._hash = file_hasher()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._check_open()
            assert self._file is not None
            self._file.write(data)
            self._hash.update(data)

    def finish(self) -> str:
        """Hand the current file to the fsync thread and return its digest."""
        with self._lock:
            self._check_open()
            assert self._file is not None
            self._file.flush()
            self._synced.append(self._syncer.submit(_sync_and_close, self._file))
            self._file = None
            return self._hash.hexdigest()

    def _wait_synced(self) -> None:
        """Every finished file closed; raises the first fsync error, if any."""
        self._syncer.shutdown(wait=True)
        for future in self._synced:
            future.result()

    def publish(self, target: Path, staging_root: Path) -> None:
        """Rename the directory to ``target``; a previous target is removed afterwards."""
        with self._lock:
            self._check_open()
            self._wait_synced()
            _fsync_dir(self.path)  # directory entries durable before the rename shows them
            target.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if target.exists() or target.is_symlink():
                # Rename the old state aside rather than delete it first: between the two
                # renames target is absent for an instant, never half-deleted.
                old = staging_root / f"replaced-{uuid.uuid4().hex}"
                os.rename(target, old)
            try:
                os.rename(self.path, target)
            except BaseException:
                if old is not None:
                    os.rename(old, target)
                raise
            _fsync_dir(target.parent)
            self._discarded = True  # nothing left to discard: the directory is target now
        if old is not None:
            _remove(old)

    def discard(self) -> None:
        with self._lock:
            if self._discarded:
                return
            self._discarded = True
            if self._file is not None:
                self._file.close()
                self._file = None
            with contextlib.suppress(OSError):
                self._wait_synced()
            shutil.rmtree(self.path, ignore_errors=True)

    def _check_open(self) -> None:
        if self._discarded:
            raise RuntimeError("staging directory was discarded")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sync_and_close(file: BinaryIO) -> None:
    try:
        os.fsync(file.fileno())
    finally:
        file.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
