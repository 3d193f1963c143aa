"""Large synthetic camera-trap frames: held-out creatures of the synthetic world pasted small at known
boxes, written as JPEGs (optionally with an EXIF orientation), plus their MegaDetector batch JSON."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from promptcam.batch.options import DetectionOptions
from promptcam.batch.run import RunOptions, RunSummary, run_files
from promptcam.train.scenes import scene_background


def val_tiles(world: Path, per_class: int) -> list[tuple[np.ndarray, int]]:
    """Held-out world images (RGB) and their class index, ``per_class`` of each class."""
    tiles = []
    for folder in sorted((Path(world) / "val").iterdir()):
        index = int(folder.name.split(".")[0])
        for png in sorted(folder.glob("*.png"))[:per_class]:
            tiles.append((cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB), index))
    return tiles


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with a minimal EXIF block (APP1) holding only the orientation tag."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def write_jpeg(path: Path, rgb: np.ndarray, *, quality: int = 90, orientation: int | None = None) -> Path:
    """Write an RGB frame as JPEG. With ``orientation`` 6 the stored pixels are the frame turned a quarter
    counter-clockwise, so a viewer (and OpenCV) applying the tag shows ``rgb`` as given."""
    stored = np.ascontiguousarray(np.rot90(rgb, k=1)) if orientation == 6 else rgb
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(stored, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    raw = data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(with_orientation(raw, orientation) if orientation else raw)
    return path


@dataclass
class Scene:
    """Frames on disk and, per file, the detections (MegaDetector dicts) and the true class of each
    detection (None: not a creature, or not meant to be classified)."""

    root: Path
    detections: dict[str, list[dict]] = field(default_factory=dict)
    truth: dict[str, list[int | None]] = field(default_factory=dict)
    tiny: set[tuple[str, int]] = field(default_factory=set)  # (file, detection index) of tiny boxes

    def md_json(self, extra_entries: list[str] = ()) -> dict:
        images = [{"file": f, "detections": d, "max_detection_conf": max([x["conf"] for x in d], default=0.0)}
                  for f, d in self.detections.items()]
        images += [{"file": f, "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.2, 0.2]}]}
                   for f in extra_entries]
        return {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt",
                         "detection_completion_time": "2026-11-01 10:00:00"},
                "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": images}


def _box(x: int, y: int, side: int, width: int, height: int) -> list[float]:
    return [round(x / width, 6), round(y / height, 6), round(side / width, 6), round(side / height, 6)]


def paste(frame: np.ndarray, tile: np.ndarray, x: int, y: int, side: int) -> None:
    """Paste ``tile`` scaled to ``side`` px at (x, y), cut where it leaves the frame."""
    big = cv2.resize(tile, (side, side), interpolation=cv2.INTER_LINEAR)
    h, w = frame.shape[:2]
    x1, y1 = min(w, x + side), min(h, y + side)
    frame[y:y1, x:x1] = big[: y1 - y, : x1 - x]


def build_scene(root: Path, tiles: list[tuple[np.ndarray, int]], *, frames: int = 16, large: int = 2,
                seed: int = 0) -> Scene:
    """``frames`` 1600x1200 frames and ``large`` 4000x3000 frames, two creatures each, plus a sub-threshold
    animal box and a person box. Frame 0 has its creatures at the edges, frame 1 adds a tiny (24 px) one,
    frame 2 is stored with EXIF orientation 6."""
    rng = np.random.default_rng(seed)
    scene = Scene(root)
    order = iter(rng.permutation(len(tiles)).tolist() * 4)
    for k in range(frames + large):
        width, height = (4000, 3000) if k >= frames else (1600, 1200)
        name = f"{'big' if k >= frames else 'cam'}/IMG_{k:04d}.JPG"
        frame = scene_background(rng, width, height)
        lo, hi = (450, 700) if k >= frames else (180, 300)
        dets: list[dict] = []
        truth: list[int | None] = []
        if k == 0:  # at the edges: the crop square leaves the frame and is padded
            spots = [(0, int(rng.integers(0, height - hi))), (width - lo, height - lo)]
            sides = [int(rng.integers(lo, hi)), lo]
        else:
            half = width // 2
            sides = [int(rng.integers(lo, hi)) for _ in range(2)]
            spots = [(int(rng.integers(0, half - sides[0])), int(rng.integers(0, height - sides[0]))),
                     (int(rng.integers(half, width - sides[1])), int(rng.integers(0, height - sides[1])))]
        for (x, y), side in zip(spots, sides, strict=True):
            tile, cls = tiles[next(order)]
            paste(frame, tile, x, y, side)
            dets.append({"category": "1", "conf": round(float(rng.uniform(0.6, 0.98)), 3),
                         "bbox": _box(x, y, side, width, height)})
            truth.append(cls)
        if k == 1:
            tile, cls = tiles[next(order)]
            paste(frame, tile, width // 2 - 12, 20, 24)
            dets.append({"category": "1", "conf": 0.5, "bbox": _box(width // 2 - 12, 20, 24, width, height)})
            truth.append(cls)
            scene.tiny.add((name, len(dets) - 1))
        dets.append({"category": "1", "conf": 0.15, "bbox": [0.45, 0.8, 0.05, 0.06]})  # below 0.2
        dets.append({"category": "2", "conf": 0.8, "bbox": [0.4, 0.3, 0.05, 0.15]})  # a person
        truth += [None, None]
        write_jpeg(root / name, frame, orientation=6 if k == 2 else None)
        scene.detections[name] = dets
        scene.truth[name] = truth
    return scene


def write_md(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def detection_file_run(predictor, scene: dict, out: Path, log) -> tuple[RunSummary, dict]:  # noqa: ANN001
    """``promptcam-run --detections`` (with heatmaps) on a scene fixture's photos and MegaDetector file:
    the run's summary and its ``results.json``."""
    options = RunOptions(inputs=[scene["root"] / "photos"], out_dir=out, progress=False, heatmaps=out / "heat",
                         detections=DetectionOptions(path=scene["md"]))
    summary = run_files(predictor, options, log=log)
    return summary, json.loads((out / "results.json").read_text())


T0 = datetime(2026, 5, 1, 6, 0, 0)  # the first shot of the event tests


def with_capture_time(jpeg: bytes, when: datetime) -> bytes:
    """A JPEG with an EXIF block holding DateTimeOriginal (in the Exif sub-IFD, where cameras put it)."""
    stamp = when.strftime("%Y:%m:%d %H:%M:%S").encode() + b"\x00"
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 26) + struct.pack("<I", 0)
    exif_ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x9003, 2, 20, 44) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + exif_ifd + stamp
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def write_shot(path, when: datetime | None, seed: int) -> None:
    write_jpeg(path, scene_background(np.random.default_rng(seed), 96, 72))
    if when is not None:
        path.write_bytes(with_capture_time(path.read_bytes(), when))
