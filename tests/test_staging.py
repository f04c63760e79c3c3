"""The receiver's disk side: O_DIRECT files from aligned buffers, and the writer thread.

The archive checks live in test_snapshot.py; these tests pin what they rely on: bytes land
exactly (sizes that are not block multiples included), a filesystem that refuses O_DIRECT
still gets the file, and a writer's failure reaches the reader and installs nothing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from backbone.snapshot import direct_file
from backbone.snapshot.direct_file import ALIGN, DirectFile, aligned_buffers
from backbone.snapshot.staging import Staging, StagingDiscardedError

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * 16384 + 7]


def write_file(path: Path, data: bytes, buffer_size: int = 16384) -> None:
    [buffer] = aligned_buffers(1, buffer_size)
    file = DirectFile(path)
    for start in range(0, len(data), buffer_size):
        piece = data[start : start + buffer_size]
        buffer[: len(piece)] = piece
        file.write(buffer, len(piece))
    file.complete()


@pytest.mark.parametrize("size", SIZES)
def test_direct_file_holds_exactly_what_was_written(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    write_file(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


def test_only_the_last_write_may_be_unaligned(tmp_path: Path) -> None:
    [buffer] = aligned_buffers(1, ALIGN)
    file = DirectFile(tmp_path / "f")
    file.write(buffer, 10)
    with pytest.raises(ValueError, match="after the file's last, unaligned one"):
        file.write(buffer, 10)
    file.close()


def test_buffers_are_page_aligned_and_sized_in_blocks() -> None:
    with pytest.raises(ValueError, match="not a multiple of 4096"):
        aligned_buffers(1, 1000)
    import ctypes

    for buffer in aligned_buffers(3, 2 * ALIGN):
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        assert address % ALIGN == 0 and len(buffer) == 2 * ALIGN


def test_a_filesystem_without_o_direct_gets_ordinary_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    opened_direct = []

    def no_direct(path: object, flags: int, mode: int = 0o777) -> int:
        if flags & direct_file._O_DIRECT:
            opened_direct.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    data = os.urandom(ALIGN * 5 + 123)
    write_file(tmp_path / "f", data)
    assert opened_direct == [tmp_path / "f"]
    assert (tmp_path / "f").read_bytes() == data


def test_a_refused_o_direct_write_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    real_write = os.write
    refused = []

    def refuse_direct(fd: int, data: memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_file._O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuse_direct)
    data = os.urandom(ALIGN * 9 + 5)
    write_file(tmp_path / "f", data)
    assert len(refused) == 1  # once: the flag is dropped for the rest of the file
    assert (tmp_path / "f").read_bytes() == data


def test_staging_writes_files_in_order_and_publishes(tmp_path: Path) -> None:
    files = {"000009.sst": os.urandom(9 << 20), "CURRENT": b"MANIFEST-000005\n", "LOG": b""}
    staging = Staging(tmp_path / "in")
    for name, data in files.items():
        staging.create(name)
        for start in range(0, len(data), 4 << 20):
            buffer = staging.buffer()
            piece = data[start : start + len(buffer)]
            buffer[: len(piece)] = piece
            staging.write(buffer, len(piece))
        staging.finish()
    target = tmp_path / "stores" / "3"
    staging.publish(target, tmp_path / "in")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == files
    assert list((tmp_path / "in").iterdir()) == []


def test_a_writer_failure_installs_nothing(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "in")
    staging.create("x")
    staging.finish()
    staging.create("x")  # O_EXCL: the writer thread fails
    target = tmp_path / "stores" / "3"
    with pytest.raises(FileExistsError):
        staging.publish(target, tmp_path / "in")
    with pytest.raises(FileExistsError):
        staging.buffer()  # a reader still running hears of it too
    staging.discard()
    assert not target.exists() and list((tmp_path / "in").iterdir()) == []


def test_discard_stops_a_reader_waiting_for_a_buffer(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "in")
    taken = [staging.buffer() for _ in range(4)]  # every buffer is with the reader
    assert len(taken) == 4
    staging.discard()
    with pytest.raises(StagingDiscardedError):
        staging.buffer()
    assert list((tmp_path / "in").iterdir()) == []
