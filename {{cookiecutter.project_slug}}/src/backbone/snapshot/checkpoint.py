"""A RocksDB checkpoint of one partition store, the manifest that describes it, and the
checksums sent after its files."""

from __future__ import annotations

import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import xxhash
from rocksdict import AccessType, Checkpoint, Options, Rdict

from backbone.store.partition_store import (
    CHANGELOG_OFFSET,
    GENERATION,
    INPUT_OFFSET,
    META_CF,
    PartitionStore,
)

FORMAT_VERSION = 2
MANIFEST_NAME = "MANIFEST.json"
CHECKSUMS_NAME = "CHECKSUMS.json"
# Detects corruption in transit or on disk; authenticity comes from the token and TLS, so a
# non-cryptographic hash is enough, and at ~20 GB/s it costs nothing next to sha256's ~1.7.
CHECKSUM = "xxh3_128"
_INT = struct.Struct(">q")
_DIGEST_HEX = re.compile(r"[0-9a-f]{32}")
# RocksDB names its files CURRENT, MANIFEST-000005, 000009.sst, OPTIONS-000007, ...: a
# whitelist this narrow cannot spell a path, a hidden file or anything a shell would expand.
# 100 characters is what a ustar header holds without its prefix field.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ManifestError(ValueError):
    """A manifest that cannot be read or that this version does not understand."""


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name we would create, or None if it is one."""
    if "\0" in name:
        return "contains a NUL byte"
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "refers to a parent directory"
    if "/" in name:
        return "is not a plain file name (contains '/')"
    if "\\" in name:
        return "contains a backslash"
    if name in (MANIFEST_NAME, CHECKSUMS_NAME):
        return f"is a reserved name ({name})"
    if not _PLAIN_NAME.fullmatch(name):
        return "is not 1-100 characters of [A-Za-z0-9._-] starting with a letter or digit"
    return None


def file_hasher() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int


class _VersionOnly(msgspec.Struct):
    version: int


@dataclass(frozen=True)
class Manifest:
    version: int  # archive format version, FORMAT_VERSION
    partition: int
    generation: int
    changelog_offset: int  # next changelog offset to read after installing this checkpoint
    input_offset: int  # next input offset to process
    files: tuple[FileEntry, ...]
    checksum: str = CHECKSUM  # how CHECKSUMS.json, after the files, hashes each of them

    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        # Read the version alone first: a newer format may not even decode as this one,
        # and "unsupported version 2" says more than a missing-field error would.
        try:
            version = msgspec.json.decode(data, type=_VersionOnly).version
        except msgspec.DecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON with a version: {exc}") from exc
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"unsupported manifest version {version}: this node reads version "
                f"{FORMAT_VERSION} only (is the peer running a newer release?)"
            )
        try:
            manifest = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ManifestError(f"invalid manifest: {exc}") from exc
        manifest._validate()
        return manifest

    def _validate(self) -> None:
        # The manifest comes from a peer: its names become file names on our disk.
        for field in ("partition", "generation", "changelog_offset", "input_offset"):
            if getattr(self, field) < 0:
                raise ManifestError(f"manifest {field} is negative")
        seen: set[str] = set()
        for entry in self.files:
            problem = name_problem(entry.name)
            if problem:
                raise ManifestError(f"manifest file name {entry.name!r} {problem}")
            if entry.name in seen:
                raise ManifestError(f"manifest lists {entry.name!r} twice")
            seen.add(entry.name)
            if entry.size < 0:
                raise ManifestError(f"manifest size of {entry.name!r} is negative")
        if self.checksum != CHECKSUM:
            raise ManifestError(
                f"unsupported checksum {self.checksum!r}: this node reads {CHECKSUM}"
            )


@dataclass(frozen=True)
class Checksums:
    """The last member of the archive: each file's digest, computed as it was sent, so the
    serving node reads every file once and sends its first byte at once."""

    files: dict[str, str]

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes, manifest: Manifest) -> Checksums:
        try:
            checksums = msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise ManifestError(f"invalid {CHECKSUMS_NAME}: {exc}") from exc
        listed = {entry.name for entry in manifest.files}
        if checksums.files.keys() != listed:
            raise ManifestError(
                f"{CHECKSUMS_NAME} names {sorted(checksums.files)}, the manifest {sorted(listed)}"
            )
        for name, digest in checksums.files.items():
            if not _DIGEST_HEX.fullmatch(digest):
                raise ManifestError(f"{CHECKSUMS_NAME}: digest of {name!r} is not 32 hex digits")
        return checksums


def create_checkpoint(store: PartitionStore, workdir: Path) -> tuple[Path, Manifest]:
    """Checkpoint ``store`` into a fresh directory under ``workdir``.

    Blocking (RocksDB flush): call it through ``asyncio.to_thread``. The
    caller owns the returned directory and removes it when done.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # RocksDB creates the directory itself and refuses one that exists.
    directory = workdir / f"checkpoint-p{store.partition}-{uuid.uuid4().hex}"
    try:
        Checkpoint(store._db).create_checkpoint(str(directory))
        # Offsets come from the checkpoint, not from the live store, which may have moved
        # on since: data and offsets from one checkpoint, so the receiver resumes exactly
        # where the copied data ends.
        changelog_offset, input_offset, generation = _read_meta(directory)
        files = tuple(_describe(path) for path in sorted(directory.iterdir()))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    manifest = Manifest(
        version=FORMAT_VERSION,
        partition=store.partition,
        generation=generation,
        changelog_offset=changelog_offset,
        input_offset=input_offset,
        files=files,
    )
    return directory, manifest


class CheckpointRefusedError(ValueError):
    """Received files that are not the store their manifest describes."""


def verify_checkpoint(directory: Path, manifest: Manifest, changelog_end: int) -> None:
    """Prove that ``directory`` is the RocksDB checkpoint ``manifest`` describes, before it
    replaces a store: its CURRENT and MANIFEST files exist, it opens, the offsets inside it
    are the manifest's, and its changelog offset lies within the changelog (a store ahead
    of the changelog's end cannot come from this changelog)."""
    names = {path.name for path in directory.iterdir()}
    if "CURRENT" not in names or not any(n.startswith("MANIFEST-") for n in names):
        raise CheckpointRefusedError(
            f"checkpoint of partition {manifest.partition} has no CURRENT and MANIFEST-* "
            f"files ({len(names)} files): it is not a RocksDB store"
        )
    try:
        offsets = _read_meta(directory)
    except Exception as exc:
        raise CheckpointRefusedError(
            f"checkpoint of partition {manifest.partition} does not open as a RocksDB store: {exc}"
        ) from exc
    stated = (manifest.changelog_offset, manifest.input_offset, manifest.generation)
    if offsets != stated:
        raise CheckpointRefusedError(
            f"checkpoint of partition {manifest.partition} holds (changelog, input, "
            f"generation) offsets {offsets}, its manifest says {stated}"
        )
    if manifest.changelog_offset > changelog_end:
        raise CheckpointRefusedError(
            f"checkpoint of partition {manifest.partition} is at changelog offset "
            f"{manifest.changelog_offset}, beyond the changelog's end {changelog_end}: "
            "it does not come from this changelog"
        )


def _read_meta(directory: Path) -> tuple[int, int, int]:
    # Read-only open: creates no LOCK or LOG file, so the checkpoint's file list is unchanged.
    db = Rdict(
        str(directory),
        options=Options(raw_mode=True),
        column_families={META_CF: Options(raw_mode=True)},
        access_type=AccessType.read_only(),
    )
    try:
        meta = db.get_column_family(META_CF)
        try:
            raw = [meta.get(name) for name in (CHANGELOG_OFFSET, INPUT_OFFSET, GENERATION)]
        finally:
            del meta  # the column family must be released before the database closes
    finally:
        db.close()
    # Absent means nothing applied yet, as PartitionStore.meta() reads it.
    return (
        _decode_int(raw[0], CHANGELOG_OFFSET),
        _decode_int(raw[1], INPUT_OFFSET),
        _decode_int(raw[2], GENERATION),
    )


def _decode_int(raw: object, name: bytes) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, bytes) or len(raw) != _INT.size:
        raise ValueError(f"checkpoint meta {name!r} is not an 8-byte integer: {raw!r}")
    return int(_INT.unpack(raw)[0])


def _describe(path: Path) -> FileEntry:
    if not path.is_file() or path.is_symlink():
        raise ValueError(f"checkpoint holds {path.name!r}, which is not a regular file")
    problem = name_problem(path.name)
    if problem:
        raise ValueError(f"checkpoint file name {path.name!r} {problem}")
    return FileEntry(name=path.name, size=path.stat().st_size)
