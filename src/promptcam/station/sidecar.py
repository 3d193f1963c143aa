"""Per-image detection sidecars: ``promptcam-watch --detections sidecar``.

A station runs MegaDetector on each photo as it arrives and writes its boxes beside the photo. For
``DIR/IMG_0001.JPG`` the watcher looks, in this order, for

1. ``DIR/IMG_0001.JPG.json`` (unambiguous: name it so when one folder holds ``IMG.JPG`` and ``IMG.PNG``),
2. ``DIR/IMG_0001.json``,

and takes the first that exists. A sidecar is one of:

- a MegaDetector batch-results file (format 1.x) listing exactly this one image (its ``file`` may
  carry any folder, its last component must be the image's name, case ignored);
- a bare object ``{"detections": [...]}`` (optionally ``"failure"``), read with MegaDetector's
  standard categories ``{"1": "animal", "2": "person", "3": "vehicle"}``.

Both are checked by the batch-file checks of ``detections`` (categories, ``conf`` in [0, 1], the
``bbox`` quadruple). A sidecar that is not complete JSON is treated as still being written
(``SidecarIncomplete``); complete JSON of the wrong shape is a ``PromptCamError`` naming the file.
A sidecar above ``MAX_SIDECAR_BYTES`` is refused from its size, before a byte of it is read
(``read_sidecar``), and of its detections at most ``MAX_CROPS_PER_PHOTO`` are classified
(``results.megadetector.select_crops``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcam.core.atomic import atomic_write_bytes, fsync_dir
from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import UntrustedJSONError, loads_untrusted
from promptcam.results.megadetector import (
    MEGADETECTOR_CATEGORIES,
    DetectorFile,
    check_batch,
    check_entry,
    normalise_name,
)
from promptcam.station.archive import free_name, makedirs_durable, rename_noreplace

DETECTION_MODES = ("sidecar",)  # room for a detector file that grows ("growing"), not built yet
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 16 * 2**20  # one image's boxes are a few kB: a larger sidecar is refused unread


class SidecarIncomplete(PromptCamError):
    """The sidecar is not complete JSON (yet): an upload in progress while it is young."""


@dataclass(frozen=True)
class Sidecar:
    """One image's detections, read from its sidecar.

    Attributes:
        detector: The sidecar as a one-image detector file (for ``category_ids``).
        detections: The image's detections (None: the detector failed on it).
        failure: The detector's failure string, when it failed.
    """

    detector: DetectorFile
    detections: list[dict[str, Any]] | None
    failure: str | None


def sidecar_paths(image: Path) -> tuple[Path, Path]:
    """Where the sidecar of ``image`` may be, in the order looked at."""
    return image.with_name(image.name + SIDECAR_SUFFIX), image.with_suffix(SIDECAR_SUFFIX)


def find_sidecar(image: Path) -> Path | None:
    """The first of ``sidecar_paths(image)`` that exists (as any kind of entry: a link is refused on reading)."""
    return next((p for p in sidecar_paths(image) if os.path.lexists(p)), None)


def is_sidecar_name(name: str) -> bool:
    """Whether an inbox file name is a sidecar's (never an image)."""
    return name.lower().endswith(SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> tuple[bytes, os.stat_result]:
    """A sidecar's bytes and stat: a regular file (a link is not followed, a FIFO does not block), refused
    from its size above ``MAX_SIDECAR_BYTES`` before anything is read, and never more than that read (a
    file that grows while it is read is refused too).

    Raises:
        PromptCamError: naming the sidecar (and the limit).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise PromptCamError(f"{path}: cannot read detection sidecar ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PromptCamError(f"{path}: detection sidecar is not a regular file")
        if st.st_size > MAX_SIDECAR_BYTES:
            raise _too_big(path, st.st_size)
        chunks, size = [], 0
        while size <= MAX_SIDECAR_BYTES and (chunk := os.read(fd, min(1 << 20, MAX_SIDECAR_BYTES + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SIDECAR_BYTES:
            raise _too_big(path, size, growing=True)
        return b"".join(chunks), st
    except OSError as exc:
        raise PromptCamError(f"{path}: cannot read detection sidecar ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)


def _too_big(path: Path, size: int, *, growing: bool = False) -> PromptCamError:
    what = "grew above" if growing else f"is {size} bytes, above"
    return PromptCamError(f"{path}: detection sidecar {what} the {MAX_SIDECAR_BYTES // 2**20} MiB limit "
                          "(MAX_SIDECAR_BYTES); not read")


def parse_sidecar(path: Path, data: bytes, image_name: str) -> Sidecar:
    """Check a sidecar's bytes (shapes in the module docstring).

    Args:
        path: The sidecar file, for messages.
        data: Its bytes.
        image_name: The image's file name (no folder).

    Raises:
        SidecarIncomplete: not complete JSON.
        PromptCamError: complete, but not a sidecar of this one image, or a malformed detection.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptCamError(f"{path}: detection sidecar is not UTF-8 JSON ({exc})") from exc
    try:
        obj = loads_untrusted(text, f"{path}: detection sidecar")
    except UntrustedJSONError as exc:
        if exc.malformed:
            raise SidecarIncomplete(f"{path}: detection sidecar is not complete JSON ({exc})") from exc
        raise PromptCamError(str(exc)) from exc
    if isinstance(obj, dict) and "images" in obj:
        categories, info = check_batch(path, obj)
        if len(obj["images"]) != 1:
            raise PromptCamError(f"{path}: a detection sidecar lists one image; this one lists {len(obj['images'])}")
        entry = obj["images"][0]
        described = posixpath.basename(normalise_name(entry["file"]))
        if described.casefold() != image_name.casefold():
            raise PromptCamError(f"{path}: detection sidecar describes {entry['file']!r}, not {image_name}")
    elif isinstance(obj, dict) and "detections" in obj:
        categories, info = dict(MEGADETECTOR_CATEGORIES), {}
        entry = {**obj, "file": image_name}
        check_entry(path, 0, entry, categories)
    else:
        raise PromptCamError(f"{path}: not a detection sidecar (neither a MegaDetector batch file of one image "
                             "nor an object with 'detections')")
    detector = DetectorFile(path, hashlib.sha256(data).hexdigest(), categories, info, [])
    failure = entry.get("failure")
    return Sidecar(detector, entry.get("detections"), None if failure is None else str(failure))


def move_beside(sidecar: Path, image_name: str, archived_image: Path) -> Path:
    """Move a sidecar next to its archived image, in the same naming form (never overwriting a file, not
    even one made meanwhile: ``rename_noreplace`` / a hard link; across file systems the sidecar is read
    as ``read_sidecar`` reads it: no link followed, no FIFO waited on, at most ``MAX_SIDECAR_BYTES``).

    Returns:
        Where the sidecar went.

    Raises:
        OSError: it could not be moved (it stays in the inbox).
    """
    if sidecar.name == image_name + SIDECAR_SUFFIX:
        target = archived_image.with_name(archived_image.name + SIDECAR_SUFFIX)
    else:
        target = archived_image.with_suffix(SIDECAR_SUFFIX)
    target = free_name(target, lambda _: False)
    makedirs_durable(target.parent)
    if os.lstat(sidecar).st_dev == os.stat(target.parent).st_dev:
        while True:
            try:
                rename_noreplace(sidecar, target)
                break
            except FileExistsError:
                target = free_name(target, lambda _: False)
        fsync_dir(target.parent)
    else:
        try:
            data, st = read_sidecar(sidecar)
        except PromptCamError as exc:
            raise OSError(str(exc)) from exc
        tmp = target.with_name(f".{target.name}.promptcam.part")
        atomic_write_bytes(tmp, data)
        try:
            while True:
                try:
                    rename_noreplace(tmp, target)  # never overwrites
                    break
                except FileExistsError:
                    target = free_name(target, lambda _: False)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        now = os.lstat(sidecar)
        if (now.st_ino, now.st_ctime_ns) == (st.st_ino, st.st_ctime_ns):  # still the sidecar that was copied
            sidecar.unlink()
    fsync_dir(sidecar.parent)
    return target
