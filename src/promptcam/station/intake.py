"""Reading one ready inbox file: its bytes, content hash, capture time, sidecar and decode, into a ``Taken``.

Every file ends as exactly one of: a row to commit (classified later, or failed now), a duplicate of
an earlier row (an identical re-upload: recorded, not classified again), or "not ready" (it looks
half-written and is young: an empty file, a JPEG without its end marker, a PNG without ``IEND``, a
file that does not decode, a sidecar that is not complete JSON). Nothing here raises for a bad file.
Decoding goes through the one image path (``runtime.model_input``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError, PromptCamError
from promptcam.results.megadetector import category_ids, qualifies
from promptcam.runtime.exif import exif_datetime
from promptcam.runtime.images import check_dimensions, read_regular_file
from promptcam.runtime.model_input import ModelInput, model_input
from promptcam.runtime.records import ImageRecord, db_text

from .archive import valid_taken_at
from .options import SidecarOptions
from .readiness import FileVersion
from .sidecar import Sidecar, SidecarIncomplete, find_sidecar, parse_sidecar, sidecar_paths

PNG_END = b"IEND\xaeB`\x82"


@dataclass
class Duplicate:
    """An identical re-upload of a file that already has a row (same name and content)."""

    result_id: int
    ok: bool
    taken_at: str | None
    sha256: str


@dataclass
class Taken:
    """What reading one ready file gave.

    Attributes:
        version: (name, size, mtime) as read: the row's identity in the scan.
        row: The row to commit (None for a duplicate or a file not ready).
        photo: The decoded model input (whole image, or the crops of the selected detections).
        selected: ``--detections``: the classified detections' indices in ``row.detections``.
        duplicate: Set for an identical re-upload.
        not_ready: Why the file is looked at again later.
        unreadable: The file could not be read (no content hash; it is not moved).
    """

    path: Path
    version: FileVersion
    row: ImageRecord | None = None
    photo: ModelInput | None = None
    selected: list[int] = field(default_factory=list)
    duplicate: Duplicate | None = None
    not_ready: str | None = None
    unreadable: bool = False

    @property
    def rel(self) -> str:
        return self.version[0]


def upload_incomplete(data: np.ndarray | bytes) -> str | None:
    """Why ``data`` looks like a file still being written (JPEG/PNG end markers), or None."""
    if not len(data):
        return "empty"
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    end = len(buf)
    if buf[end - 1] == 0:  # a preallocated file: the part not yet written is zeros (rare: search only then)
        written = np.flatnonzero(buf)
        end = int(written[-1]) + 1 if written.size else 0
    tail = bytes(buf[max(0, end - 32):end])
    head = bytes(buf[:8])
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "no JPEG end marker yet"
    if head == b"\x89PNG\r\n\x1a\n" and PNG_END not in tail:
        return "no PNG end chunk yet"
    return None


class Intake:
    """Reads ready files for one station.

    Args:
        source: The inbox (the rows' ``source``).
        config: The model's config (its input size).
        find_row: ``(source, file, sha256) -> (row id, status) | None``: an earlier row of this content.
        sidecars: ``--detections sidecar`` settings (None: whole images).
        keep_preview: Heatmaps are drawn (keep a preview of each decode).
        young: ``(path, mtime in seconds) -> bool``: the file may still be being written.
        fail: Make a failed row (and log it).
        categories: The station's one detection-category map so far (from its database).
    """

    def __init__(self, source: str, config: ModelConfig, *, find_row: Callable[[str, str, str], Any],
                 sidecars: SidecarOptions | None, keep_preview: bool,
                 young: Callable[[Path, float], bool],
                 fail: Callable[..., ImageRecord], categories: dict[str, str] | None = None) -> None:
        self.source = source
        self.config = config
        self.find_row = find_row
        self.sidecars = sidecars
        self.keep_preview = keep_preview
        self.young = young
        self.fail = fail
        self.categories: dict[str, str] = dict(categories or {})

    def read(self, path: Path, rel: str) -> tuple[Taken, np.ndarray | None, str | None]:
        """Read and hash one file (any thread): (taken so far, its bytes, its capture time)."""
        shown = db_text(str(path))
        try:
            data, st = read_regular_file(path, follow_links=False, allow_empty=True)
        except ImageError as exc:
            try:
                st = os.lstat(path)
            except OSError:
                return Taken(path, (rel, 0, 0), not_ready="vanished"), None, None
            # unreadable files have no content hash: their row is keyed on the path, and they are not
            # moved (the move checks content, which cannot be read)
            sha = hashlib.sha256(f"unreadable:{rel}".encode("utf-8", "surrogateescape")).hexdigest()
            version = (rel, st.st_size, st.st_mtime_ns)
            reason = str(exc).replace(str(path), shown, 1)
            return Taken(path, version, row=self.fail(version, sha, reason), unreadable=True), None, None
        version = (rel, st.st_size, st.st_mtime_ns)
        incomplete = upload_incomplete(data)
        if incomplete is not None and self.young(path, st.st_mtime):
            return Taken(path, version, not_ready=incomplete), None, None
        sha = hashlib.sha256(data).hexdigest()
        if not len(data):
            return Taken(path, version, row=self.fail(version, sha, f"{shown}: zero-byte file")), None, None
        taken_at = valid_taken_at(exif_datetime(memoryview(data)), st.st_mtime)
        return Taken(path, version, row=ImageRecord(source=self.source, file=rel, sha256=sha, size=st.st_size,
                                                    mtime_ns=st.st_mtime_ns, taken_at=taken_at)), data, taken_at

    def duplicate_of(self, taken: Taken) -> bool:
        """Whether a read file is an identical re-upload of a row (the store is read on the caller's thread)."""
        row = taken.row
        found = self.find_row(self.source, row.file, row.sha256)
        if found is None:
            return False
        result_id, status = found
        taken.duplicate, taken.row = Duplicate(result_id, status == "ok", row.taken_at, row.sha256), None
        return True

    def decode(self, taken: Taken, data: np.ndarray) -> Taken:
        """Decode a read file for the model (any thread): the whole image, or its sidecar's crops.

        Whatever a hostile file makes go wrong here is that file's failed row, never the station's crash
        (a supervisor restarting a station that dies on the same file would loop for ever)."""
        try:
            return self._decode(taken, data)
        except Exception as exc:  # noqa: BLE001 - the last guard of one file; the batch goes on
            return self._failed(taken, f"{db_text(str(taken.path))}: cannot be taken "
                                       f"({type(exc).__name__}: {str(exc)[:200]})")

    def _decode(self, taken: Taken, data: np.ndarray) -> Taken:
        row, shown = taken.row, db_text(str(taken.path))
        boxes = None
        if self.sidecars is not None:
            boxes = self._sidecar_boxes(taken)
            if boxes is None or taken.not_ready is not None:
                return taken
        try:
            if boxes == []:  # nothing to classify: the header gives the size, the photo is not decoded
                width, height = check_dimensions(data, shown)
                row.width, row.height = width, height
                return taken
            taken.photo = model_input(data, shown, self.config, boxes=boxes, keep_preview=self.keep_preview)
        except ImageError as exc:
            if self.young(taken.path, taken.version[2] / 1e9):
                taken.not_ready, taken.row = str(exc), None
                return taken
            return self._failed(taken, str(exc))
        row.height, row.width = taken.photo.size
        return taken

    def _failed(self, taken: Taken, reason: str) -> Taken:
        row = taken.row
        taken.row, taken.photo = self.fail(taken.version, row.sha256, reason, row.taken_at), None
        taken.row.detections = row.detections if self.sidecars is None else None
        return taken

    def _merge_categories(self, sidecar: Sidecar) -> None:
        """Add a sidecar's categories to the station's one map; a clash (an id named otherwise) is refused."""
        for cid, name in sidecar.detector.detection_categories.items():
            known = self.categories.get(cid)
            if known is not None and known != name:
                raise PromptCamError(f"{sidecar.detector.path}: detection category {cid} is {name!r} here but "
                                     f"{known!r} in this station's earlier sidecars")
        self.categories.update(sidecar.detector.detection_categories)

    def _sidecar_boxes(self, taken: Taken) -> list[list[float]] | None:
        """The boxes to crop from a photo's sidecar (``[]``: none qualifies); None when the row failed."""
        path, shown, wait = taken.path, db_text(str(taken.path)), self.sidecars.wait
        sidecar_path = find_sidecar(path)
        if sidecar_path is None:
            looked = " or ".join(db_text(p.name) for p in sidecar_paths(path))
            self._failed(taken, f"{shown}: no detection sidecar ({looked}) within --sidecar-wait {wait:g} s")
            return None
        try:
            raw, sst = read_regular_file(sidecar_path, follow_links=False, allow_empty=True)
            try:
                sidecar = parse_sidecar(sidecar_path, raw.tobytes(), path.name)
            except SidecarIncomplete as exc:
                if self.young(sidecar_path, sst.st_mtime):
                    taken.not_ready, taken.row = str(exc), None
                    return None
                raise
            wanted = category_ids(sidecar.detector, self.sidecars.categories)
            self._merge_categories(sidecar)
        except (PromptCamError, ImageError) as exc:  # malformed sidecar (or not a regular file): the record names it
            self._failed(taken, db_text(str(exc)))
            return None
        if sidecar.detections is None:
            self._failed(taken, f"{shown}: the detector failed on it ({sidecar.failure or 'no detections'}; "
                                f"{db_text(str(sidecar_path))})")
            return None
        taken.row.detections = [dict(d) for d in sidecar.detections]
        taken.selected = [i for i, d in enumerate(taken.row.detections)
                          if qualifies(d, wanted, self.sidecars.threshold)]
        return [taken.row.detections[i]["bbox"] for i in taken.selected]


def file_is_young(mtime: float, quiet_for: float, incomplete_wait: float) -> bool:
    """Whether a file may still be being written: changed (or first seen quiet) less than ``incomplete_wait``
    ago. A file that looks half-written is waited for while it is young."""
    return max(time.time() - mtime, quiet_for) < incomplete_wait
