"""Cold bootstrap: a consistent RocksDB checkpoint, streamed as a tar and installed safely.

The server side (``stream_checkpoint``) and the client side (``receive_checkpoint``) agree
on one archive layout: ``MANIFEST.json`` first, then every checkpoint file as a flat
regular file whose size and sha256 the manifest states.
"""

from backbone.snapshot.archive import CheckpointStream, stream_checkpoint
from backbone.snapshot.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    ManifestError,
    create_checkpoint,
)
from backbone.snapshot.install import UnsafeArchiveError, receive_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CheckpointStream",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "UnsafeArchiveError",
    "create_checkpoint",
    "receive_checkpoint",
    "stream_checkpoint",
]
