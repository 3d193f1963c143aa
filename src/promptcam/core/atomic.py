"""Atomic, durable file writes: a unique temp file in the target folder, fsync, rename, fsync the folder.

A reader (or a restart after a power cut) sees the old file or the new one, never half of one.
Temp names are unique, so two writers of one target never share a temp file, and they stay short,
so a target whose name is near the file-system limit (255 bytes) can still be written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or unlink in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None,
                durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit it replaces ``path``, on an error it is removed."""
    binary = "b" in mode

    with _temp_beside(path, durable=durable) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else newline) as fh:
            yield fh


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> Path:
    with atomic_open(path, "w", durable=durable) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_with(path: str | Path, writer: Callable[[Path], object], *, durable: bool = True) -> Path:
    """For libraries that write to a path themselves (``torch.save``, ``onnx.save``, Parquet)."""
    with _temp_beside(path, durable=durable) as tmp:
        writer(tmp)
    return Path(path)


@contextlib.contextmanager
def _temp_beside(path: str | Path, *, durable: bool) -> Iterator[Path]:
    """A unique temp path in ``path``'s folder; after the body: fsync it, rename it over ``path``, fsync the folder.

    On an error the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (model files, checkpoints, detector files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
