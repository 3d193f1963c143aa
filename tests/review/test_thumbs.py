"""Thumbnails of large photos: decoded at a JPEG DCT reduction, through the shared pixel budget, so
concurrent requests cannot take the server's memory with them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptcam.results.store import ResultStore
from promptcam.review.app import create_app
from promptcam.review.index import build_index, locate
from promptcam.runtime import images
from promptcam.runtime.records import ImageRecord

pytest.importorskip("httpx", reason="starlette's test client needs httpx (the dev extra)")
from starlette.testclient import TestClient  # noqa: E402


def station_of(inbox: Path, names: list[str]) -> Path:
    """A station database with one row per photo in ``inbox``."""
    store = ResultStore(inbox.parent / "station" / "results.sqlite")
    try:
        store.add([ImageRecord(file=name, source=str(inbox), sha256=f"{i:064d}", size=1,
                               top_k=[{"index": 0, "name": "fox", "probability": 0.9}])
                   for i, name in enumerate(names)])
    finally:
        store.close()
    return store.path


def large_photo(path: Path, width: int, height: int) -> Path:
    """A smooth gradient (cheap to encode, a full decode is still width x height x 3 bytes)."""
    row = np.linspace(0, 255, width, dtype=np.float32)
    column = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = row, column, (row + column) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if path.suffix == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 80]
    assert cv2.imwrite(str(path), image, params)
    return path


def test_a_jpeg_thumbnail_is_decoded_at_a_reduction_within_the_budget(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    large_photo(tmp_path / "inbox" / "big.jpg", 4000, 3000)
    large_photo(tmp_path / "inbox" / "wide.png", 1200, 300)
    source = locate(station_of(tmp_path / "inbox", ["big.jpg", "wide.png"]))
    build_index(source)
    held: list[int] = []
    hold = images.DECODE_BUDGET.hold

    def recording(pixels: int):
        held.append(pixels)
        return hold(pixels)

    monkeypatch.setattr(images.DECODE_BUDGET, "hold", recording)
    client = TestClient(create_app(source), raise_server_exceptions=False)
    answer = client.get("/thumb/1")
    assert answer.status_code == 200
    assert held == [500 * 375]  # 1/8 of 4000x3000 in the DCT domain: still wider than the 256-pixel thumbnail
    thumb = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    assert thumb.shape == (192, 256, 3)
    assert client.get("/thumb/2").status_code == 200 and held[1:] == [1200 * 300]  # a PNG has no reduced decode
    assert client.get("/thumb/1").status_code == 200 and len(held) == 2  # cached: not decoded again


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, threading
    from pathlib import Path

    from starlette.testclient import TestClient

    from promptcam.review.app import create_app
    from promptcam.review.index import locate
    from promptcam.runtime import images

    def peak_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    db, count, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    images.DECODE_BUDGET.limit = budget  # the shared budget, scaled to the test's photos
    client = TestClient(create_app(locate(db)), raise_server_exceptions=False)
    assert client.get("/thumb/5").status_code == 200  # warm up on the small photo
    before = peak_kib()
    start = threading.Barrier(count)
    answers = []

    def fetch(item_id):
        start.wait()
        answers.append(client.get(f"/thumb/{item_id}").status_code)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(1, count + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"answers": answers, "growth_mib": (peak_kib() - before) / 1024}))
""")


def peak_growth_mib(db: Path, count: int, budget: int) -> float:
    """Peak RSS growth of a fresh server process answering ``count`` thumbnail requests at once."""
    shutil.rmtree(locate(db).cache_dir, ignore_errors=True)  # every thumbnail decoded, none from the cache
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(db), str(count), str(budget)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["answers"] == [200] * count
    return measured["growth_mib"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (VmHWM)")
def test_concurrent_thumbnails_of_large_pngs_decode_one_budget_at_a_time(tmp_path: Path) -> None:
    """Four 24 MP PNGs at once, under a budget of one of them: the peak grows about as much as for one
    thumbnail, not four times that (RSS from /proc: OpenCV's buffers are invisible to tracemalloc)."""
    count, (width, height) = 4, (6000, 4000)
    first = large_photo(tmp_path / "inbox" / "big0.png", width, height)
    for i in range(1, count):
        (tmp_path / "inbox" / f"big{i}.png").write_bytes(first.read_bytes())
    large_photo(tmp_path / "inbox" / "small.png", 64, 48)
    db = station_of(tmp_path / "inbox", [f"big{i}.png" for i in range(count)] + ["small.png"])
    build_index(locate(db))
    alone = peak_growth_mib(db, 1, width * height)
    together = peak_growth_mib(db, count, width * height)
    print(f"\npeak grew {alone:.0f} MiB for one thumbnail, {together:.0f} MiB for {count} at once "
          f"({width * height * 3 / 2**20:.0f} MiB per decoded photo)")
    assert alone > width * height * 3 / 2**20 * 0.8  # the measure sees the decode
    assert together < 1.5 * alone
