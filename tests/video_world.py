"""A synthetic video world: clips where a held-out creature of the synthetic world enters the frame,
stays a while, and leaves; some clips stay empty. Written as real MP4/AVI files with OpenCV, with
the MegaDetector video results (``process_video``'s format) a detector would give them."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from promptcam.train.scenes import scene_background

FRAME_W, FRAME_H = 320, 240
FPS = 10.0
SECONDS = 6
TILE = 200  # the creature's tile, scaled
BOX_INSET = 0.1  # the detector's box hugs the creature: the tile's inner 80%


@dataclass
class Clip:
    name: str
    truth: int | None  # None: an empty clip
    boxes: dict[int, list[float]] = field(default_factory=dict)  # frame number -> normalised box (detector)


def _tile_position(t: float) -> float:
    """x of the tile's left edge at time t: enters (0-1.5 s), stays (1.5-4.5 s), leaves (4.5-6 s)."""
    centre = (FRAME_W - TILE) / 2
    if t < 1.5:
        return -TILE + (centre + TILE) * t / 1.5
    if t < 4.5:
        return centre + 6 * np.sin(t * 3)
    return centre + (FRAME_W - centre) * (t - 4.5) / 1.5


def write_clip(path: Path, tile: np.ndarray | None, seed: int, *, fourcc: str = "mp4v",
               frames: int = int(FPS * SECONDS), size: tuple[int, int] = (FRAME_W, FRAME_H)) -> dict[int, list[float]]:
    """Write one clip; returns the detector's boxes by frame number (the frames where most of the creature shows)."""
    rng = np.random.default_rng(seed)
    width, height = size
    scene = scene_background(rng, width, height)
    big = cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_LINEAR) if tile is not None else None
    y = (height - TILE) // 2
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    assert writer.isOpened(), path
    boxes: dict[int, list[float]] = {}
    for n in range(frames):
        frame = scene.copy()
        frame[rng.integers(0, height), :] = 128  # a little motion everywhere (a flickering leaf)
        if big is not None:
            x = int(round(_tile_position(n / FPS)))
            x0, x1 = max(0, x), min(width, x + TILE)
            if x1 > x0:
                frame[y:y + TILE, x0:x1] = big[:, x0 - x:x1 - x]
            inner0, inner1 = x + BOX_INSET * TILE, x + (1 - BOX_INSET) * TILE
            seen0, seen1 = max(0.0, inner0), min(float(width), inner1)
            if seen1 - seen0 >= 0.6 * (inner1 - inner0):
                side = (1 - 2 * BOX_INSET) * TILE
                boxes[n] = [round(seen0 / width, 5), round((y + BOX_INSET * TILE) / height, 5),
                            round((seen1 - seen0) / width, 5), round(side / height, 5)]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return boxes


def build_video_world(root: Path, tiles: list[tuple[np.ndarray, int]], *, clips: int = 16, empty: int = 4,
                      seed: int = 0) -> list[Clip]:
    """``clips`` clips with one creature each (every other one an AVI) and ``empty`` empty MP4 clips."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tiles))
    out = []
    for k in range(clips + empty):
        creature = k < clips
        tile, cls = tiles[int(order[k % len(order)])] if creature else (None, None)
        suffix, fourcc = (".avi", "MJPG") if k % 2 else (".mp4", "mp4v")
        name = f"clips/clip{k:02d}{suffix}"
        boxes = write_clip(root / name, tile, seed * 1000 + k, fourcc=fourcc)
        out.append(Clip(name, cls, boxes))
    return out


def md_video_results(clips: list[Clip], every: int = int(FPS)) -> dict:
    """What MegaDetector's ``process_video`` writes (format 1.5): per clip its frame rate, the frames it
    processed (every ``every``-th) and their detections, each with its ``frame_number``."""
    images = []
    for clip in clips:
        processed = list(range(0, int(FPS * SECONDS), every))
        dets = [{"category": "1", "conf": 0.9, "bbox": clip.boxes[n], "frame_number": n}
                for n in processed if n in clip.boxes]
        images.append({"file": clip.name, "frame_rate": FPS, "frames_processed": processed, "detections": dets})
    return {"info": {"format_version": "1.5", "detector": "md_v5a.0.0.pt"},
            "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": images}


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def rotate_mp4(data: bytes, degrees: int = 90) -> bytes:
    """An MP4 with its video track's display matrix (``tkhd``) set to turn the picture by ``degrees``."""
    at = data.index(b"tkhd")
    version = data[at + 4]
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    one, minus = 0x10000, 0xFFFF0000
    matrices = {90: (0, one, 0, minus, 0, 0), 180: (minus, 0, 0, 0, minus, 0), 270: (0, minus, 0, one, 0, 0)}
    a, b, u, c, d, v = matrices[degrees]
    packed = struct.pack(">9I", a, b, u, c, d, v, 0, 0, 0x40000000)
    return data[:matrix_at] + packed + data[matrix_at + 36:]
