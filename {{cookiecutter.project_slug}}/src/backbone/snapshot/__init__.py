"""Cold bootstrap: a consistent RocksDB checkpoint, streamed as a tar and installed safely.

The server side (``stream_checkpoint``) and the client side (``receive_checkpoint``) agree
on one archive layout: ``MANIFEST.json`` first, then every checkpoint file as a flat
regular file whose size the manifest states, and last ``CHECKSUMS.json`` with the digest
of each file, computed while it was sent.
"""

from backbone.snapshot.archive import CheckpointStream, stream_checkpoint
from backbone.snapshot.checkpoint import (
    CHECKSUMS_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    CheckpointRefusedError,
    Checksums,
    FileEntry,
    Manifest,
    ManifestError,
    create_checkpoint,
    verify_checkpoint,
)
from backbone.snapshot.install import NoSpaceError, UnsafeArchiveError, receive_checkpoint

__all__ = [
    "CHECKSUMS_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CheckpointRefusedError",
    "CheckpointStream",
    "Checksums",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "NoSpaceError",
    "UnsafeArchiveError",
    "create_checkpoint",
    "receive_checkpoint",
    "stream_checkpoint",
    "verify_checkpoint",
]
