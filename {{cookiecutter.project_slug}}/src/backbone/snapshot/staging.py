"""The staging directory a checkpoint is written into, and its atomic rename into place.

The thread that reads the network fills buffers and queues them; a writer thread writes
them to disk (O_DIRECT where possible) and hands them back, so the socket and the disk
work at the same time. Nothing in here checks the archive: that is ``install``'s job.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Literal

from backbone.snapshot.direct_file import DirectFile, aligned_buffers

BUFFERS = 4
BUFFER_BYTES = 4 << 20

_Job = (
    tuple[Literal["create"], str]
    | tuple[Literal["write"], memoryview, int]
    | tuple[Literal["finish"]]
    | None
)


class StagingDiscardedError(RuntimeError):
    """The transfer was abandoned (failure elsewhere, or cancellation)."""


class Staging:
    def __init__(self, staging_root: Path) -> None:
        staging_root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="incoming-", dir=staging_root))
        self._free: queue.Queue[memoryview | None] = queue.Queue()
        for buffer in aligned_buffers(BUFFERS, BUFFER_BYTES):
            self._free.put(buffer)
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._error: BaseException | None = None
        # Held while the writer runs a job: discard() waits for it, so no file can appear
        # in the directory after it is gone.
        self._lock = threading.Lock()
        self._discarded = False
        self._done = False  # published or discarded: the directory is no longer ours
        self._writer = threading.Thread(target=self._write_all, name="checkpoint-writer")
        self._writer.start()

    # --- the reading thread ---------------------------------------------------------------

    def buffer(self) -> memoryview:
        """A free buffer to fill (waits for the writer to hand one back)."""
        buffer = self._free.get()
        if self._error is not None:
            raise self._error
        if buffer is None or self._discarded:
            raise StagingDiscardedError("staging directory was discarded")
        return buffer

    def create(self, name: str) -> None:
        self._jobs.put(("create", name))

    def write(self, buffer: memoryview, length: int) -> None:
        """Queue ``buffer[:length]`` for the current file; the buffer is the writer's now."""
        self._jobs.put(("write", buffer, length))

    def finish(self) -> None:
        """The current file is complete: size it, fsync and close it."""
        self._jobs.put(("finish",))

    # --- the event loop ---------------------------------------------------------------------

    def complete(self) -> None:
        """Wait for every queued write; raises the writer's error. Blocking."""
        self._stop_writer()
        if self._error is not None:
            raise self._error

    def publish(self, target: Path, staging_root: Path) -> None:
        """Wait for every write, then rename the directory to ``target``; a previous
        target is removed afterwards. Blocking: call it in a worker thread."""
        self._stop_writer()
        with self._lock:  # a discard() from the event loop waits for the rename
            if self._discarded:
                raise StagingDiscardedError("staging directory was discarded")
            if self._error is not None:
                raise self._error
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
            self._done = True  # nothing left to discard: the directory is target now
            _fsync_dir(target.parent)
        if old is not None:
            _remove(old)

    def discard(self) -> None:
        """Stop writing and remove the directory; a reader still running gets
        StagingDiscardedError at its next step."""
        with self._lock:
            self._discarded = True
        self._stop_writer()
        self._free.put(None)  # wakes a reader waiting for a buffer
        with self._lock:
            if not self._done:
                self._done = True
                shutil.rmtree(self.path, ignore_errors=True)

    def _stop_writer(self) -> None:
        self._jobs.put(None)
        self._writer.join()

    # --- the writer thread ------------------------------------------------------------------

    def _write_all(self) -> None:
        file: DirectFile | None = None
        try:
            while (job := self._jobs.get()) is not None:
                with self._lock:
                    if self._discarded or self._error is not None:
                        if job[0] == "write":
                            self._free.put(job[1])  # keep a waiting reader moving
                        continue
                    try:
                        file = self._run(job, file)
                    except BaseException as exc:
                        self._error = exc
                        self._free.put(None)  # the reader stops at its next buffer
        finally:
            if file is not None:
                file.close()

    def _run(self, job: _Job, file: DirectFile | None) -> DirectFile | None:
        assert job is not None
        if job[0] == "create":
            if file is not None:
                raise RuntimeError("a file was created before the previous one finished")
            return DirectFile(self.path / job[1])
        assert file is not None, "a write or finish without a file"
        if job[0] == "write":
            _, buffer, length = job
            try:
                file.write(buffer, length)
            finally:
                self._free.put(buffer)
            return file
        file.complete()
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
