"""The video row: frames classified per second from clips, against the same frames as JPEG photos, one run.

Clips are 1920x1080 at 30 frames per second (MPEG-4, as OpenCV writes it), sampled at 1 frame per
second (``--video-fps`` default); the JPEG folder holds exactly the frames a clip run samples, written
at full size (quality 88). Both folders go through ``run_files`` in one process, alternated, fastest of
each counting. A clip costs every frame's decode (a video codec has no reduced decode and a frame
depends on the ones before it): 30 decodes per classified frame here, where a photo costs one reduced
JPEG decode. ``decode_ms_per_frame`` is the clip decode alone (the sampling pass with no model) per
classified frame; the clip's decode runs in its own thread, overlapping inference (``clips.prefetched``),
so it shows in the throughput only where it is longer than the model's time per frame.

By hand (2 threads)::

    python -c "from promptcam.benchmarks.videorate import video_row; print(video_row('MODEL_DIR', threads=2))"
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.video import DEFAULT_VIDEO_FPS, sample_frames

VIDEO_SIZE = (1920, 1080)
VIDEO_RATE = 30.0
JPEG_QUALITY = 88


def write_bench_clips(folder: Path, clips: int, seconds: float, *, seed: int = 0) -> list[Path]:
    """``clips`` camera-trap-like clips: a textured still scene, sensor noise, a creature-sized blob crossing."""
    rng = np.random.default_rng(seed)
    width, height = VIDEO_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    noise = [rng.integers(0, 10, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    paths = []
    for k in range(clips):
        coarse = rng.uniform(40, 200, size=(12, 16, 3)).astype(np.uint8)
        scene = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        path = folder / f"CLIP_{k:04d}.MP4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_RATE, (width, height))
        for n in range(int(seconds * VIDEO_RATE)):
            frame = cv2.add(scene, noise[n % len(noise)])
            cv2.circle(frame, (int(n * width / (seconds * VIDEO_RATE)), height // 2), 150, (60, 40, 30), -1)
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def measure_video_rate(predictor: Predictor, *, clips: int = 2, seconds: float = 10.0, workers: int = 4,
                       repeats: int = 2) -> dict[str, Any]:
    """Frames classified per second from clips and from the same frames as JPEGs (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="promptcam-videorate-") as tmp:
        root = Path(tmp)
        paths = write_bench_clips(root / "clips", clips, seconds)
        photos = root / "photos"
        photos.mkdir()
        sampled = 0
        for path in paths:  # the very frames a clip run samples, as photos
            for frame in sample_frames(path, fps=DEFAULT_VIDEO_FPS)[1]:
                sampled += 1
                cv2.imwrite(str(photos / f"{path.stem}_{frame.number:06d}.JPG"),
                            cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        started = time.perf_counter()
        for path in paths:
            for _ in sample_frames(path, fps=DEFAULT_VIDEO_FPS)[1]:
                pass
        decode_only = time.perf_counter() - started

        def rate(folder: Path, name: str) -> float:
            summary = run_files(predictor, RunOptions(inputs=[folder], out_dir=root / "out" / name, workers=workers,
                                                      progress=False, overwrite=True), log=lambda _: None)
            seconds_taken = summary.seconds or 1e-9
            return sampled / seconds_taken

        rate(photos, "warmup")
        rates: dict[str, list[float]] = {"clips": [], "photos": []}
        for _ in range(repeats):
            rates["clips"].append(rate(root / "clips", "clips"))
            rates["photos"].append(rate(photos, "photos"))
        best = {k: max(v) for k, v in rates.items()}
        return {"clips": clips, "clip_seconds": seconds, "size": f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]}",
                "clip_fps": VIDEO_RATE, "sample_fps": DEFAULT_VIDEO_FPS, "frames_classified": sampled,
                "clip_frames_per_s": round(best["clips"], 2), "jpeg_frames_per_s": round(best["photos"], 2),
                "clip_over_jpeg": round(best["clips"] / best["photos"], 3),
                "decode_ms_per_frame": round(decode_only * 1000 / sampled, 1)}


def video_row(model_dir: str | Path, engine: str = "ort-cpu", *, clips: int = 2, seconds: float = 10.0,
              threads: int | None = None, batch: int = 8) -> dict[str, Any]:
    """``measure_video_rate`` on a model directory (its load untimed), with the engine named."""
    with Predictor(model_dir, engine, batch_size=batch, threads=threads) as predictor:
        result = measure_video_rate(predictor, clips=clips, seconds=seconds)
        return {"engine": predictor.engine_description, "batch": batch, "threads": threads,
                "model": predictor.config.arch, **result}
