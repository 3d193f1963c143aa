"""Reading one ready inbox file: its bytes, content hash, capture time, sidecar and decode, into a ``Taken``.

Every file ends as exactly one of: a row to commit (classified later, or failed now), a duplicate of
an earlier row (an identical re-upload: recorded, not classified again), a file seen before (the very
version of a row or duplicate, read again because its inode or ctime is new to the station: its
entry remembers the new ones, nothing else is recorded), or "not ready" (it looks
half-written and is young: an empty file, a JPEG without its end marker, a PNG without ``IEND``, a
file that does not decode, a sidecar that is not complete JSON). Nothing here raises for a bad file.
Decoding goes through the one image path (``runtime.model_input``), within its pixel budget
(``DECODE_BUDGET``); what a read file keeps until its batch is recorded is its model pixels and, with
heatmaps, a preview of heatmap size (``heatmap_preview``): never its full-size decode, so the memory
of the batch in flight and of the next one (decoded ahead) does not grow with the photos' size.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError, PromptCamError
from promptcam.results.megadetector import category_ids, mark_left_out, select_clip_crops, select_crops
from promptcam.results.store import FileId, FileKey
from promptcam.runtime.crops import box_failure
from promptcam.runtime.exif import exif_datetime
from promptcam.runtime.images import check_dimensions, read_regular_file
from promptcam.runtime.model_input import HEATMAP_PREVIEW_SIDE, ModelInput, model_input
from promptcam.runtime.records import ImageRecord, db_text
from promptcam.runtime.video import DEFAULT_VIDEO_MAX_FRAMES, is_video_path

from .archive import valid_taken_at
from .options import SidecarOptions
from .readiness import FileVersion, file_key
from .sidecar import Sidecar, SidecarIncomplete, find_sidecar, parse_sidecar, read_sidecar, sidecar_paths

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
        version: (name, size, mtime) as read.
        key: ``version`` with the file's (inode, ctime): how the scan recognises it once it has its entry.
        row: The row to commit (None for a duplicate or a file not ready).
        photo: The decoded model input (whole image, or the crops of the selected detections).
        selected: ``--detections``: the classified detections' indices in ``row.detections``.
        left_out: ``--detections``: how many qualifying detections ``MAX_CROPS_PER_PHOTO`` left unclassified.
        duplicate: Set for an identical re-upload.
        seen: (table, id) of the row or duplicate this very file already has (``seen_before``).
        read_failure: Why the file could not be taken (unreadable, empty): its failed row is made unless
            it was ``seen`` (``needs_decode``).
        not_ready: Why the file is looked at again later.
        unreadable: The file could not be read (no content hash; it is not moved).
    """

    path: Path
    version: FileVersion
    key: FileKey | None = None
    row: ImageRecord | None = None
    photo: ModelInput | None = None
    selected: list[int] = field(default_factory=list)
    left_out: int = 0
    duplicate: Duplicate | None = None
    seen: tuple[str, int] | None = None
    read_failure: str | None = None
    not_ready: str | None = None
    unreadable: bool = False
    video: bool = False  # a clip: classified from its path by the one clip path (``runtime.clips``), not decoded here
    clip_boxes: dict[int, list[int]] | None = None  # a clip's sidecar boxes by frame number

    @property
    def rel(self) -> str:
        return self.version[0]

    @property
    def file_id(self) -> FileId | None:
        """(inode, ctime_ns) of the file as read."""
        return None if self.key is None else (self.key[3], self.key[4])


def upload_incomplete(data: np.ndarray | bytes) -> str | None:
    """Why ``data`` looks like a file still being written (JPEG/PNG end markers), or None."""
    if not len(data):
        return "empty"
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    end = len(buf)
    if buf[end - 1] == 0:  # a preallocated file: the part not yet written is zeros (rare: search only then)
        end = _written_end(buf)
    tail = bytes(buf[max(0, end - 32):end])
    head = bytes(buf[:8])
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "no JPEG end marker yet"
    if head == b"\x89PNG\r\n\x1a\n" and PNG_END not in tail:
        return "no PNG end chunk yet"
    return None


def _written_end(buf: np.ndarray, window: int = 1 << 20) -> int:
    """The offset after the last non-zero byte: searched back from the end a window at a time (linear in the
    zeros, a window's memory: never an index of the whole file)."""
    end = len(buf)
    while end > 0:
        start = max(0, end - window)
        written = buf[start:end] != 0  # a byte a byte
        if written.any():
            return end - int(np.argmax(written[::-1]))
        end = start
    return 0


class Intake:
    """Reads ready files for one station.

    Args:
        source: The inbox (the rows' ``source``).
        config: The model's config (its input size).
        find_row: ``(source, file, sha256) -> (row id, status) | None``: an earlier row of this content.
        find_seen: ``(source, file, sha256, size, mtime_ns) -> (table, id) | None``: the entry of this version.
        sidecars: ``--detections sidecar`` settings (None: whole images).
        keep_preview: Heatmaps are drawn (keep a preview of each decode).
        young: ``(path, mtime in seconds) -> bool``: the file may still be being written.
        fail: Make a failed row (and log it).
        categories: The station's one detection-category map so far (from its database).
    """

    def __init__(self, source: str, config: ModelConfig, *, find_row: Callable[[str, str, str], Any],
                 find_seen: Callable[..., tuple[str, int] | None], sidecars: SidecarOptions | None, keep_preview: bool,
                 young: Callable[[Path, float], bool],
                 fail: Callable[..., ImageRecord], categories: dict[str, str] | None = None,
                 clip_frames: int = DEFAULT_VIDEO_MAX_FRAMES) -> None:
        self.source = source
        self.config = config
        self.find_row = find_row
        self.find_seen = find_seen
        self.sidecars = sidecars
        self.keep_preview = keep_preview
        self.young = young
        self.fail = fail
        self.categories: dict[str, str] = dict(categories or {})
        self.clip_frames = clip_frames  # a clip's sidecar: frames classified at most (--video-max-frames)

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
            return Taken(path, version, file_key(version, st), row=self._row(version, sha), read_failure=reason,
                         unreadable=True), None, None
        version = (rel, st.st_size, st.st_mtime_ns)
        key = file_key(version, st)
        incomplete = upload_incomplete(data)
        if incomplete is not None and self.young(path, st.st_mtime):
            return Taken(path, version, key, not_ready=incomplete), None, None
        sha = hashlib.sha256(data).hexdigest()
        if not len(data):
            return Taken(path, version, key, row=self._row(version, sha),
                         read_failure=f"{shown}: zero-byte file"), None, None
        taken_at = valid_taken_at(exif_datetime(memoryview(data)), st.st_mtime)
        return Taken(path, version, key, row=ImageRecord(source=self.source, file=rel, sha256=sha, size=st.st_size,
                                                    mtime_ns=st.st_mtime_ns, taken_at=taken_at)), data, taken_at

    def _row(self, version: FileVersion, sha: str) -> ImageRecord:
        rel, size, mtime_ns = version
        return ImageRecord(source=self.source, file=rel, sha256=sha, size=size, mtime_ns=mtime_ns)

    def needs_decode(self, taken: Taken) -> bool:
        """After ``read``, on the watcher's thread (it reads the store): whether the file is new content to
        decode. A file seen before is not (``seen``), nor an identical re-upload (``duplicate``), nor a
        file that could not be read or is empty (its failed row is made here, and logged once)."""
        if taken.row is None:
            return False
        if self.seen_before(taken):
            return False
        if taken.read_failure is not None:
            taken.row = self.fail(taken.version, taken.row.sha256, taken.read_failure)
            return False
        return not self.duplicate_of(taken)

    def seen_before(self, taken: Taken) -> bool:
        """Whether a read file is the very version of a row or duplicate (name, content, size and mtime): its
        inode or ctime was new to the station (an older database, a copy put back, a chmod), and it is
        that entry again, not a new one."""
        rel, size, mtime_ns = taken.version
        found = self.find_seen(self.source, rel, taken.row.sha256, size, mtime_ns)
        if found is None:
            return False
        taken.seen, taken.row = found, None
        return True

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
        if is_video_path(taken.path):
            taken.video = True
            if self.sidecars is not None:
                self._sidecar_boxes(taken)  # a clip's boxes by frame (taken.clip_boxes); its frames decode later
            return taken
        boxes = None
        if self.sidecars is not None:
            boxes = self._sidecar_boxes(taken)
            if boxes is None or taken.not_ready is not None:
                return taken
        try:
            if boxes is not None:
                row.width, row.height = check_dimensions(data, shown)
                boxes = self._drop_failed_boxes(taken, row.width, row.height)
            if boxes == []:  # nothing to classify: the header gives the size, the photo is not decoded
                return taken
            taken.photo = model_input(data, shown, self.config, boxes=boxes, keep_preview=self.keep_preview)
        except ImageError as exc:
            if self.young(taken.path, taken.version[2] / 1e9):
                taken.not_ready, taken.row = str(exc), None
                return taken
            return self._failed(taken, str(exc))
        row.height, row.width = taken.photo.size
        if taken.photo.preview is not None:
            taken.photo.preview = heatmap_preview(taken.photo.preview)
        return taken

    @staticmethod
    def _drop_failed_boxes(taken: Taken, width: int, height: int) -> list[list[float]]:
        """The selected boxes that can be cut; one outside the photo (or under a pixel of it) is a failed
        detection with its reason (``crops.box_failure``, as ``promptcam run --detections`` does), never a
        crop of black padding."""
        keep = []
        for index in taken.selected:
            detection = taken.row.detections[index]
            reason = box_failure(detection["bbox"], width, height)
            if reason is None:
                keep.append(index)
            else:
                detection["failure"] = reason
        taken.selected = keep
        return [taken.row.detections[i]["bbox"] for i in keep]

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
            raw, sst = read_sidecar(sidecar_path)  # refused unread above MAX_SIDECAR_BYTES
            try:
                sidecar = parse_sidecar(sidecar_path, raw, path.name)
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
        if taken.video:
            taken.clip_boxes, left_out = select_clip_crops(sidecar.detections, wanted, self.sidecars.threshold,
                                                           self.clip_frames)
            taken.row.detections = mark_left_out(sidecar.detections, left_out)
            taken.left_out = len(left_out)
            return []
        chosen = select_crops(sidecar.detections, wanted, self.sidecars.threshold)
        taken.row.detections = mark_left_out(sidecar.detections, chosen.left_out)
        taken.selected, taken.left_out = chosen.selected, len(chosen.left_out)
        return [taken.row.detections[i]["bbox"] for i in taken.selected]


def heatmap_preview(rgb: np.ndarray) -> np.ndarray:
    """The preview a station keeps for a photo's heatmap: reduced by the largest of 1/2, 1/4, 1/8 that keeps
    its long side at least ``HEATMAP_PREVIEW_SIDE``, as a JPEG's reduced decode is (``model_input``), for
    every format: a 9 MP PNG keeps 1500 x 1500 (6.75 MB), not its 27 MB decode, until its batch is drawn."""
    height, width = rgb.shape[:2]
    for reduction in (8, 4, 2):
        if max(height, width) / reduction >= HEATMAP_PREVIEW_SIDE:
            size = (max(1, -(-width // reduction)), max(1, -(-height // reduction)))
            return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def file_is_young(mtime: float, quiet_for: float, incomplete_wait: float) -> bool:
    """Whether a file may still be being written: changed (or first seen quiet) less than ``incomplete_wait``
    ago. A file that looks half-written is waited for while it is young."""
    return max(time.time() - mtime, quiet_for) < incomplete_wait
