"""Review fixtures: a real ``promptcam-run`` folder (tiny export, generated JPEGs) and a real station database."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_trap_scenes import T0, write_shot
from video_world import write_clip

from helpers import run_cli
from promptcam.results.store import ResultStore
from promptcam.runtime.records import ImageRecord

HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"  # a legal file name that is markup
HOSTILE_CLASS = "<script>alert(1)</script>"


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 128)) -> Path:
    """A small JPEG with a coloured blob on a textured background (distinct per seed)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (*size, 3), dtype=np.uint8)
    centre = (int(rng.integers(20, size[1] - 20)), int(rng.integers(20, size[0] - 20)))
    cv2.circle(image, centre, 14, [int(v) for v in rng.integers(0, 256, 3)], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="session")
def run_folder(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``promptcam-run`` over 9 generated JPEGs in two camera folders plus a broken file (heatmaps, traits)."""
    root = tmp_path_factory.mktemp("review_run")
    images = root / "images"
    for i in range(4):
        write_jpeg(images / "camA" / f"a{i}.jpg", i)
        write_jpeg(images / "camB" / f"b{i}.jpg", 10 + i)
    write_jpeg(images / "camB" / HOSTILE_NAME, 99)
    (images / "camA" / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = root / "out"
    result = run_cli("promptcam-run", images, "--model", tiny_export, "--out", out, "--heatmaps", root / "heatmaps",
                     "--traits", 2, "--engine", "ort-cpu", "--no-progress", "--top-k", 3)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture()
def results_copy(run_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the run's result files (each test gets its own review database)."""
    out = tmp_path / "results"
    out.mkdir()
    for f in run_folder.iterdir():
        if f.is_file() and f.name.startswith("results."):
            shutil.copy2(f, out / f.name)
    return out


def station_records(inbox: Path, archive: Path, frames: Path) -> list[ImageRecord]:
    """Records as a station writes them: in the inbox, moved to the archive, and a stream frame."""
    def top(*pairs: tuple[int, str, float]) -> list[dict]:
        return [{"index": i, "name": n, "probability": p} for i, n, p in pairs]

    write_jpeg(inbox / "site1" / "x.jpg", 1)
    write_jpeg(archive / "2024-05-02" / "site1" / "y.jpg", 2)
    write_jpeg(frames / "gate" / "f1.jpg", 3)
    write_jpeg(inbox / "site2" / "z.jpg", 4)
    return [
        ImageRecord(source=str(inbox), file="site1/x.jpg", sha256="a" * 64, size=1, taken_at="2024-05-01T10:00:00Z",
                    top_k=top((0, "fox", 0.9), (1, HOSTILE_CLASS, 0.1)), width=128, height=96),
        ImageRecord(source=str(inbox), file="site1/y.jpg", sha256="b" * 64, size=1, taken_at="2024-05-02T10:00:00Z",
                    stored_path=str(archive / "2024-05-02" / "site1" / "y.jpg"),
                    top_k=top((1, HOSTILE_CLASS, 0.8), (0, "fox", 0.2)), width=128, height=96),
        ImageRecord(source="rtsp://cam/gate", file="gate/f1.jpg", sha256="c" * 64, size=1,
                    taken_at="2024-06-01T00:00:00Z", top_k=top((2, "deer", 0.7), (0, "fox", 0.3))),
        ImageRecord(source=str(inbox), file="site2/z.jpg", sha256="d" * 64, size=1, taken_at="2024-06-03T00:00:00Z",
                    failure="site2/z.jpg: cannot decode image"),
    ]


@pytest.fixture()
def station_db(tmp_path: Path) -> Path:
    """A real ``ResultStore`` database of four rows (frames under the database's folder, as streams write them)."""
    station = tmp_path / "station"
    db = station / "results.sqlite"
    store = ResultStore(db)
    try:
        assert store.add(station_records(tmp_path / "inbox", tmp_path / "archive", station / "frames")) == 4
    finally:
        store.close()
    return db


@contextlib.contextmanager
def live(app, host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """``app`` on uvicorn at ``host`` (a loopback address) and a free port, until the block ends."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# (camera, file, seconds after T0): cam1 fires a burst of three and, five minutes later, one more;
# cam2 a burst of two, interleaved in time with cam1's
BURSTS = [("cam1", "IMG_0001.JPG", 0), ("cam2", "IMG_0001.JPG", 1), ("cam1", "IMG_0002.JPG", 2),
          ("cam2", "IMG_0002.JPG", 3), ("cam1", "IMG_0003.JPG", 4), ("cam1", "IMG_0004.JPG", 300)]


def write_event_inputs(root: Path) -> Path:
    """Photos with EXIF capture times (``BURSTS``) and a two-second MP4 clip in cam3 (its own event)."""
    for k, (camera, name, seconds) in enumerate(BURSTS):
        write_shot(root / camera / name, T0 + timedelta(seconds=seconds), k)
    write_clip(root / "cam3" / "clip.mp4", None, 0, frames=20)
    return root


@pytest.fixture(scope="session")
def event_run(tiny_predictor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``promptcam run --events 60 --heatmaps`` over ``write_event_inputs`` (the run's own code, tiny model)."""
    from promptcam.batch.run import RunOptions, run_files

    root = tmp_path_factory.mktemp("review_events")
    out = root / "out"
    summary = run_files(tiny_predictor, RunOptions(inputs=[write_event_inputs(root / "site")], out_dir=out,
                                                   heatmaps=root / "heatmaps", progress=False, events=60),
                        log=lambda _: None)
    assert summary.events == 4 and summary.videos == 1
    return out


@pytest.fixture()
def event_results(event_run: Path, tmp_path: Path) -> Path:
    """A private copy of the event run's result files (each test gets its own review database)."""
    out = tmp_path / "results"
    shutil.copytree(event_run, out, ignore=shutil.ignore_patterns("review*", ".review-cache"))
    return out
