"""The "real-size" measurement: a folder of 12 MP camera-trap JPEGs against the same frames pre-shrunk.

Real camera-trap photos are 8-20 MP; a benchmark on 224 px images hides the decode. This runs the
same frames twice through ``run_files`` in one process, once as 4000x3000 JPEGs (quality 88) and
once pre-shrunk to the model's size, and reports the ratio of their throughputs (1.0: decoding
large photos costs nothing extra). The 12 MP folder is also run with full decoding
(``reduce_decode=False``) to show what the JPEG DCT reduction gains, and through the field station
(``InboxWatcher``, ``--once`` over an inbox of the same 12 MP files) to show that a station classifies
as fast as ``promptcam run`` (``watch_over_run``). Start-up (model load, the first inference) is
outside the timings.

``promptcam-bench`` reports it as the "real-size" row (``--real-size-frames``); by hand, 2 threads::

    python -c "from promptcam.benchmarks.realsize import real_size_row; print(real_size_row('MODEL_DIR', threads=2))"
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime.fastjpeg import available as simplejpeg_available
from promptcam.runtime.predictor import Predictor
from promptcam.station.inbox import InboxWatcher
from promptcam.station.options import WatchOptions

REAL_SIZE = (4000, 3000)
REAL_QUALITY = 88


def write_real_size_frames(folder: Path, count: int, *, size: tuple[int, int] = REAL_SIZE,
                           shrunk_to: int = 224, seed: int = 0) -> tuple[Path, Path]:
    """``count`` photo-like frames as ``size`` JPEGs (``folder/large``) and pre-shrunk to ``shrunk_to``
    (``folder/small``): low-frequency colour, edges and sensor-like noise, about 3 MB each at 12 MP."""
    rng = np.random.default_rng(seed)
    large, small = folder / "large", folder / "small"
    large.mkdir(parents=True, exist_ok=True)
    small.mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(count):
        coarse = rng.uniform(40, 200, size=(12, 16, 3)).astype(np.float32)
        frame = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(12):  # branches and rocks: edges the codec must spend bits on
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(frame, centre, int(rng.integers(40, 400)), tuple(float(v) for v in rng.uniform(20, 230, 3)),
                       -1)
        noise = rng.normal(0, 6, size=(height // 2, width // 2, 1)).astype(np.float32)
        frame += cv2.resize(noise, (width, height), interpolation=cv2.INTER_NEAREST)[..., None]
        bgr = np.clip(frame, 0, 255).astype(np.uint8)
        cv2.imwrite(str(large / f"IMG_{i:04d}.JPG"), bgr, [cv2.IMWRITE_JPEG_QUALITY, REAL_QUALITY])
        shrunk = cv2.resize(bgr, (shrunk_to, shrunk_to), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(small / f"IMG_{i:04d}.JPG"), shrunk, [cv2.IMWRITE_JPEG_QUALITY, REAL_QUALITY])
    return large, small


def measure_real_size(predictor: Predictor, *, frames: int = 32, workers: int = 4, repeats: int = 2,
                      log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Throughput of 12 MP JPEGs over pre-shrunk ones, same frames, same predictor, same process.

    Args:
        predictor: A loaded Predictor (its load is not timed).
        frames: Frames per folder.
        workers: Decoding threads of the run.
        repeats: Each folder is run this many times, alternating; the fastest run of each counts.

    Returns:
        ``ratio`` (large with DCT reduction / small images per second), ``ratio_full_decode``, the
        images per second of each (fastest run), the process CPU time per image of each (least), the
        JPEG decoder, and the frame facts.
    """
    with tempfile.TemporaryDirectory(prefix="promptcam-realsize-") as tmp:
        root = Path(tmp)
        large, small = write_real_size_frames(root / "frames", frames, shrunk_to=predictor.config.img_size)
        megabytes = sum(p.stat().st_size for p in large.iterdir()) / frames / 1e6

        cpu_ms: dict[str, list[float]] = {"small": [], "large": [], "large_full": []}

        def rate(folder: Path, name: str, *, reduce: bool = True) -> float:
            out = root / "out" / name
            cpu = time.process_time()
            summary = run_files(predictor, RunOptions(inputs=[folder], out_dir=out, workers=workers, progress=False,
                                                      overwrite=True, reduce_decode=reduce), log=lambda _: None)
            if name in cpu_ms:
                cpu_ms[name].append((time.process_time() - cpu) * 1000 / frames)
            return summary.images_per_second

        def watch_rate(attempt: int) -> float:
            inbox = root / f"inbox{attempt}"
            inbox.mkdir()
            for photo in large.iterdir():  # the same files, linked: nothing copied inside the timing
                os.link(photo, inbox / photo.name)
            watcher = InboxWatcher(predictor, WatchOptions(inbox=inbox, db=root / f"watch{attempt}.sqlite", settle=0.0,
                                                           poll=0.01, use_events=False, once=True, workers=workers),
                                   log=lambda _: None)
            cpu, started = time.process_time(), time.perf_counter()
            watcher.run()
            seconds = time.perf_counter() - started
            cpu_ms["watch"].append((time.process_time() - cpu) * 1000 / frames)
            if watcher.processed != frames:
                raise RuntimeError(f"the watcher classified {watcher.processed} of {frames} frames")
            return frames / seconds

        cpu_ms["watch"] = []
        rate(small, "warmup")  # first inferences, thread pools, page cache
        rates: dict[str, list[float]] = {"small": [], "large": [], "large_full": [], "watch": []}
        for attempt in range(repeats):
            rates["small"].append(rate(small, "small"))
            rates["large"].append(rate(large, "large"))
            rates["watch"].append(watch_rate(attempt))
            rates["large_full"].append(rate(large, "large_full", reduce=False))
        best = {k: max(v) for k, v in rates.items()}
        cpu = {k: min(v) for k, v in cpu_ms.items()}
        result = {"frames": frames, "size": f"{REAL_SIZE[0]}x{REAL_SIZE[1]}", "jpeg_quality": REAL_QUALITY,
                  "mean_file_mb": round(megabytes, 2), "workers": workers,
                  "small_img_per_s": round(best["small"], 2), "large_img_per_s": round(best["large"], 2),
                  "large_full_decode_img_per_s": round(best["large_full"], 2),
                  "ratio": round(best["large"] / best["small"], 3),
                  "ratio_full_decode": round(best["large_full"] / best["small"], 3),
                  # promptcam watch --once over an inbox of the same 12 MP files, against promptcam run on them
                  "watch_img_per_s": round(best["watch"], 2),
                  "watch_over_run": round(best["watch"] / best["large"], 3),
                  "watch_cpu_ms_per_image": round(cpu["watch"], 1),
                  "jpeg_decoder": "simplejpeg" if simplejpeg_available() else "opencv",
                  # process CPU time per image (all threads): what the 12 MP decode adds, less sensitive to
                  # other load on a shared machine than the throughputs
                  "small_cpu_ms_per_image": round(cpu["small"], 1), "large_cpu_ms_per_image": round(cpu["large"], 1),
                  "large_full_decode_cpu_ms_per_image": round(cpu["large_full"], 1)}
        log(f"real-size: {result}")
        return result


def real_size_row(model_dir: str | Path, engine: str = "ort-cpu", *, frames: int = 32, threads: int | None = None,
                  batch: int = 8, workers: int = 4, repeats: int = 2) -> dict[str, Any]:
    """``measure_real_size`` on a model directory: loads the Predictor (untimed), adds the engine to the row.

    Args:
        model_dir: An exported model directory.
        engine: The Predictor's engine.
        frames: Frames per folder.
        threads: Inference threads (None: the backend's default).
        batch: Inference batch size.
        workers: Decoding threads of the run.
        repeats: Runs of each folder; the fastest counts.
    """
    with Predictor(model_dir, engine, batch_size=batch, threads=threads) as predictor:
        result = measure_real_size(predictor, frames=frames, workers=workers, repeats=repeats)
        return {"engine": predictor.engine_description, "batch": batch, "threads": threads, **result}
