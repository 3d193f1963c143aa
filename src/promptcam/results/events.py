"""Events: the photos (and clips) of one camera that a trap fired in one burst, with one verdict.

A camera is the folder a file is in, or what ``--camera-from`` (a regular expression with one group,
searched in the reported name) captures. Within a camera, files are taken in capture-time order (EXIF
``DateTimeOriginal``, else the file's modification time) and a file whose time is within ``seconds``
of the previous one's joins its event; a longer gap starts a new one. A clock jump between bursts is
a gap like any other. The event's verdict combines its files' probabilities by the one rule that
clips use (``runtime.verdict``): ``event_confidence`` is the verdict's mean probability.

An ``event_id`` is ``CAMERA@START`` (the first capture time, to the second): the same photos give the
same ids in every run, and a station that restarts mid-event finds the open event by it.
The fields follow COCO Camera Traps: ``seq_id`` is the event id, ``seq_num_frames`` its size and
``frame_num`` a file's place in it (from 0).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from promptcam.core.atomic import atomic_open
from promptcam.core.errors import PromptCamError
from promptcam.runtime.records import ImageRecord, round_probability
from promptcam.runtime.verdict import Verdict, combine_frames

from .formats import csv_text

EVENTS_NAME = "events.csv"
EVENT_COLUMNS = ["event_id", "camera", "start", "end", "seq_num_frames", "files", "verdict", "event_confidence",
                 "top_k"]


def camera_pattern(text: str | None) -> re.Pattern[str] | None:
    """``--camera-from``: a regular expression; its first group (or whole match) names the camera.

    Raises:
        PromptCamError: not a valid expression.
    """
    if not text:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise PromptCamError(f"--camera-from {text!r}: not a regular expression ({exc})") from exc


def camera_of(file: str, pattern: re.Pattern[str] | None = None) -> str:
    """The camera of a reported name: ``pattern``'s first group where it matches, else the file's folder."""
    if pattern is not None and (found := pattern.search(file)):
        return found.group(1) if found.groups() and found.group(1) is not None else found.group(0)
    folder = file.replace("\\", "/").rpartition("/")[0]
    return folder or "."


def capture_time(record: ImageRecord) -> datetime | None:
    """A file's capture time (naive, as the camera's clock says): ``taken_at``, else its modification time."""
    if record.taken_at:
        try:
            return datetime.fromisoformat(record.taken_at.rstrip("Z")).replace(tzinfo=None)
        except ValueError:
            pass
    if record.mtime_ns is not None:
        return datetime.fromtimestamp(record.mtime_ns / 1e9, timezone.utc).replace(tzinfo=None)
    return None


def event_id(camera: str, start: datetime) -> str:
    return f"{camera}@{start:%Y-%m-%dT%H:%M:%S}"


def record_probabilities(record: ImageRecord, classes: int) -> np.ndarray | None:
    """A file's class probabilities [C] for combining: all of them where kept, else its top-k (the rest 0);
    with detections, those of its most confident classified box; None for a failed or blank file."""
    if not record.ok:
        return None
    vector = np.zeros(classes)
    if record.probabilities is not None and len(record.probabilities) == classes:
        return np.asarray(record.probabilities, dtype=float)
    scores: list[tuple[int, float]] = [(c["index"], c["probability"]) for c in record.top_k]
    if record.detections is not None:
        boxes = [d["classifications"] for d in record.detections if d.get("classifications")]
        if not boxes:
            return None
        best = max(boxes, key=lambda c: c[0][1])
        scores = [(int(i), float(p)) for i, p in best]
    if not scores:
        return None
    for index, probability in scores:
        if 0 <= index < classes:
            vector[index] = probability
    return vector


@dataclass
class Event:
    """One burst: its id, camera, first and last capture time, its files (indices into the records given,
    in capture order) and its verdict."""

    event_id: str
    camera: str
    start: datetime
    end: datetime
    members: list[int]
    verdict: Verdict


def group_events(records: Sequence[ImageRecord], seconds: float, classes: int, *,
                 pattern: re.Pattern[str] | None = None, detector: bool = False) -> list[Event]:
    """Group ``records`` into events (module docstring) and set their ``event_id``, ``seq_num_frames`` and
    ``frame_num``. A record with no time at all is its own event."""
    if seconds <= 0:
        raise PromptCamError("--events takes a positive number of seconds")
    by_camera: dict[str, list[tuple[datetime, str, int]]] = {}
    for index, record in enumerate(records):
        when = capture_time(record) or datetime(1970, 1, 1)
        by_camera.setdefault(camera_of(record.file, pattern), []).append((when, record.file, index))
    events: list[Event] = []
    for camera, shots in sorted(by_camera.items()):
        shots.sort()
        groups: list[list[tuple[datetime, str, int]]] = []
        for shot in shots:
            if groups and (shot[0] - groups[-1][-1][0]).total_seconds() <= seconds:
                groups[-1].append(shot)
            else:
                groups.append([shot])
        for group in groups:
            members = [index for _, _, index in group]
            verdict = combine_frames([record_probabilities(records[i], classes) for i in members], detector=detector)
            event = Event(event_id(camera, group[0][0]), camera, group[0][0], group[-1][0], members, verdict)
            for position, index in enumerate(members):
                records[index].event_id = event.event_id
                records[index].seq_num_frames = len(members)
                records[index].frame_num = position
            events.append(event)
    events.sort(key=lambda e: (e.start, e.camera))
    return events


def event_row(event: Event, records: Sequence[ImageRecord], class_names: Sequence[str],
              top_k: int = 3) -> dict[str, str]:
    verdict = event.verdict
    return {
        "event_id": event.event_id, "camera": event.camera, "start": event.start.isoformat(),
        "end": event.end.isoformat(), "seq_num_frames": str(len(event.members)),
        "files": ";".join(records[i].file for i in event.members),
        "verdict": "blank" if verdict.blank else class_names[verdict.top_class],
        "event_confidence": f"{verdict.confidence:.6f}",
        "top_k": ";".join(f"{class_names[c]}:{round_probability(verdict.probabilities[c]):.6f}"
                          for c in verdict.top_k(top_k)),
    }


def write_events_csv(path: Path, events: Sequence[Event], records: Sequence[ImageRecord],
                     class_names: Sequence[str]) -> Path:
    """The event table: one row per event (COCO ``seq_id`` = ``event_id``)."""
    with atomic_open(path, "wb") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="")
        writer = csv.DictWriter(fh, EVENT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for event in events:
            writer.writerow({k: csv_text(v) for k, v in event_row(event, records, class_names).items()})
        fh.flush()
        fh.detach()
    return path
