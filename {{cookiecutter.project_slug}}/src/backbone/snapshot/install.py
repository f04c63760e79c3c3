"""Client side of cold bootstrap: receive a checkpoint tar from a peer and install it.

The peer is not trusted: a buggy or hostile peer must neither write outside the store
being installed nor install a store other than the one it announced. So every tar header
is checked against the manifest before a byte of its member is written, every file is
hashed as it arrives and compared with the checksums that close the archive, and nothing
reaches ``target`` unless the whole archive checked out. The parser is our own and
accepts plain ustar regular files only, so no tar feature (links, devices, pax or GNU
long-name headers, sparse files) can be turned against us.

The archive is read in a worker thread straight into the writer's aligned buffers: one
copy from the socket, none on the way to the disk.
"""

from __future__ import annotations

import asyncio
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from backbone.snapshot.checkpoint import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    Checksums,
    Manifest,
    ManifestError,
    file_hasher,
    name_problem,
)
from backbone.snapshot.staging import Staging

BLOCK = tarfile.BLOCKSIZE
MAX_MANIFEST_BYTES = 1 << 20

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


class Readable(Protocol):
    """What the archive is read from: an HTTP response, a file, ``io.BytesIO``."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class UnsafeArchiveError(ValueError):
    """The archive from a peer failed a check; the message says which and where."""


class NoSpaceError(OSError):
    """The checkpoint would not fit on this node's disk."""


async def receive_checkpoint(
    source: Readable,
    target: Path,
    staging_root: Path,
    on_progress: Callable[[int, int], None] | None = None,
    check_manifest: Callable[[Manifest], None] | None = None,
    verify: Callable[[Path, Manifest], None] | None = None,
) -> Manifest:
    """Unpack the tar read from ``source`` into ``target``, replacing what is there.

    The files are written to a fresh directory under ``staging_root`` (which must be on
    the filesystem of ``target``) and renamed into place once all checks passed; on any
    failure the staging directory is removed and ``target`` is left as it was.
    ``on_progress(received, total)`` counts file bytes against the manifest's total.
    ``check_manifest`` sees the manifest before any file is received and may raise to
    refuse it (wrong partition or generation, a gap before the changelog's first offset).
    ``verify(directory, manifest)`` sees the complete staged files before they replace
    ``target`` and may raise to refuse them (a store that does not open, offsets that do
    not match). All three are called from a worker thread. If this is cancelled, the
    caller should close ``source``: the thread reading it stops at its next read.
    """
    staging = Staging(staging_root)
    try:
        manifest = await asyncio.to_thread(
            _receive, _Stream(source), staging, on_progress, check_manifest
        )
        await asyncio.to_thread(staging.complete)
        if verify is not None:
            await asyncio.to_thread(verify, staging.path, manifest)
        await asyncio.to_thread(staging.publish, target, staging_root)
    except BaseException:
        # Also on cancellation: nothing is written after discard() returns. If publish()
        # had renamed the directory already, target holds the complete new state.
        staging.discard()
        raise
    return manifest


def _receive(
    stream: _Stream,
    staging: Staging,
    on_progress: Callable[[int, int], None] | None,
    check_manifest: Callable[[Manifest], None] | None,
) -> Manifest:
    manifest = _read_manifest(stream)
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
    while (info := _next_header(stream)) is not None and info.name != CHECKSUMS_NAME:
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
        staging.create(name)
        hasher = file_hasher()
        remaining = info.size
        while remaining:
            buffer = staging.buffer()
            length = min(remaining, len(buffer))
            stream.read_into(buffer[:length], what=f"member {name!r}")
            hasher.update(buffer[:length])
            staging.write(buffer, length)
            remaining -= length
            received += length
            if on_progress is not None:
                on_progress(received, total)
        staging.finish()
        digests[name] = hasher.hexdigest()
        stream.read(-info.size % BLOCK, what=f"padding of {name!r}")
    missing = sorted(expected.keys() - digests.keys())
    if missing:
        raise UnsafeArchiveError(f"archive ended without {', '.join(missing)}")
    if info is None:
        raise UnsafeArchiveError(f"archive ended without {CHECKSUMS_NAME}")
    checksums = _read_checksums(stream, info, manifest)
    for name, digest in digests.items():
        if digest != checksums.files[name]:
            raise UnsafeArchiveError(
                f"member {name!r} has {manifest.checksum} {digest}, "
                f"{CHECKSUMS_NAME} says {checksums.files[name]}"
            )
    if _next_header(stream) is not None:
        raise UnsafeArchiveError(f"archive goes on after {CHECKSUMS_NAME}")
    if received != total:  # implied by the checks above; kept as the last word
        raise UnsafeArchiveError(f"received {received} bytes, the manifest says {total}")
    return manifest


def _read_manifest(stream: _Stream) -> Manifest:
    info = _next_header(stream)
    if info is None:
        raise UnsafeArchiveError(f"archive is empty: {MANIFEST_NAME} missing")
    if info.name != MANIFEST_NAME:
        raise UnsafeArchiveError(f"first member is {info.name!r}, not {MANIFEST_NAME}")
    body = _read_small(stream, info)
    try:
        return Manifest.from_json(body)
    except ManifestError as exc:
        raise UnsafeArchiveError(f"{MANIFEST_NAME}: {exc}") from exc


def _read_checksums(stream: _Stream, info: tarfile.TarInfo, manifest: Manifest) -> Checksums:
    body = _read_small(stream, info)
    try:
        return Checksums.from_json(body, manifest)
    except ManifestError as exc:
        raise UnsafeArchiveError(str(exc)) from exc


def _read_small(stream: _Stream, info: tarfile.TarInfo) -> bytes:
    """The body of a JSON member, which is read into memory, so it is bounded."""
    _check_regular(info)
    if info.size > MAX_MANIFEST_BYTES:
        raise UnsafeArchiveError(
            f"{info.name} is {info.size} bytes, more than {MAX_MANIFEST_BYTES}"
        )
    body = stream.read(info.size, what=info.name)
    stream.read(-info.size % BLOCK, what=f"padding of {info.name}")
    return body


def _next_header(stream: _Stream) -> tarfile.TarInfo | None:
    """The next member's header, or None at the end-of-archive (zero) block."""
    offset = stream.offset
    block = stream.read(BLOCK, what="tar header (no end-of-archive marker)")
    if block == bytes(BLOCK):
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
    except (tarfile.HeaderError, UnicodeDecodeError) as exc:
        raise UnsafeArchiveError(f"corrupt tar header at byte {offset}: {exc}") from exc
    if info.size < 0:
        raise UnsafeArchiveError(f"tar header at byte {offset} gives a negative size")
    return info


def _check_regular(info: tarfile.TarInfo) -> None:
    # Exactly REGTYPE/AREGTYPE: TarInfo.isreg() would also accept sparse and contiguous files.
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kind = _TYPE_NAMES.get(info.type, f"of type {info.type!r}")
        raise UnsafeArchiveError(f"member {info.name!r} is {kind}: only regular files allowed")


class _Stream:
    """Exact-size reads from the source, counting bytes for error messages."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.offset = 0

    def read_into(self, view: memoryview, *, what: str) -> None:
        filled = 0
        while filled < len(view):
            n = self._source.readinto(view[filled:])
            if not n:
                at = self.offset + filled
                if at == 0:
                    raise UnsafeArchiveError("archive is empty: no bytes received")
                raise UnsafeArchiveError(f"archive truncated at byte {at} while reading {what}")
            filled += n
        self.offset += filled

    def read(self, size: int, *, what: str) -> bytes:
        data = bytearray(size)
        self.read_into(memoryview(data), what=what)
        return bytes(data)
