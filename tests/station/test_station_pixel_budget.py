"""Issue 28, item 4: the station's memory does not grow with its batch size.

``promptcam run`` keeps its peak flat across batch sizes; the old watcher kept every full-size decode of
a batch (1.56 GB at batch 4, 2.74 GB at batch 8 on 10,000 x 10,000 PNGs). The watcher now decodes
through ``model_input`` (within ``DECODE_BUDGET``) and keeps only the model's pixels, plus, with
``--heatmaps``, a preview of heatmap size. A real ``promptcam-watch --once`` process is measured (its peak
RSS from ``wait4``) on the same inbox of large PNGs at ``--batch-size`` 4 and 8.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from watch_helpers import WATCH, db_rows

SIDE = 4000  # 16 MP: 48 MB decoded (above glibc's largest mmap threshold: freed at once); a flat PNG decodes in 0.2 s
PHOTOS = 12  # three batches of 4, a batch of 8 and one of 4: the next batch is decoded while one is classified
DECODED = SIDE * SIDE * 3


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _inbox(folder: Path) -> None:
    """``PHOTOS`` large flat PNGs, each with its own bytes (a text chunk), so none is a duplicate."""
    image = np.full((SIDE, SIDE, 3), 90, np.uint8)
    image[SIDE // 3:SIDE // 2, SIDE // 4:SIDE // 2] = (30, 160, 220)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    data = encoded.tobytes()
    folder.mkdir(parents=True)
    for i in range(PHOTOS):  # after the 33 bytes of signature and IHDR
        (folder / f"IMG_{i:04d}.PNG").write_bytes(data[:33] + _chunk(b"tEXt", b"Comment\x00%d" % i) + data[33:])


# a small process starts the watcher and reports its children's peak RSS: a child forked from pytest itself
# would inherit pytest's high-water mark (Linux carries ``maxrss`` across exec)
_MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def _run(model: Path, root: Path, batch: int, heatmaps: bool) -> int:
    """Peak RSS in bytes of one ``promptcam-watch --once`` over a fresh inbox."""
    inbox, db = root / f"inbox_{batch}", root / f"db_{batch}.sqlite"
    _inbox(inbox)
    args = [WATCH, str(inbox), "--model", str(model), "--db", str(db), "--engine", "ort-cpu", "--settle", "0.05",
            "--poll", "0.05", "--no-events", "--once", "--incomplete-wait", "0", "--batch-size", str(batch),
            "--workers", "4"]
    if heatmaps:
        args += ["--heatmaps", str(root / f"heatmaps_{batch}")]
    log, peak = root / f"log_{batch}.txt", root / f"peak_{batch}.txt"
    with open(log, "wb") as out:
        code = subprocess.call([sys.executable, "-c", _MEASURE, str(peak), *args], stdout=out, stderr=subprocess.STDOUT,
                               timeout=120)
    assert code == 0, log.read_text()[-2000:]
    rows = db_rows(db)
    assert len(rows) == PHOTOS and all(r["status"] == "ok" for r in rows), log.read_text()[-2000:]
    if heatmaps:
        heatmap = cv2.imread(rows[0]["heatmap"])
        assert heatmap is not None and max(heatmap.shape[:2]) >= 1000  # drawn, at heatmap size
    return int(peak.read_text()) * 1024


@pytest.mark.parametrize("heatmaps", [False, True], ids=["no_heatmaps", "heatmaps"])
def test_peak_memory_does_not_grow_with_the_batch_size(tiny_export, tmp_path: Path, heatmaps: bool) -> None:
    """Doubling the batch (4 -> 8) adds less than one decoded photo to the peak. Before the fix, with
    --heatmaps, each photo of the batch in flight and of the next (decoded ahead) kept its full-size decode as
    its preview: 12 photos of 4000 x 4000 peaked at 771 MB at batch 4 and 897 MB at batch 8 (+126 MB); now
    470 / 468 MB (a 1000 x 1000 preview each). Without heatmaps 456 / 455 MB before and after."""
    small = _run(tiny_export, tmp_path / "b4", 4, heatmaps)
    large = _run(tiny_export, tmp_path / "b8", 8, heatmaps)
    assert large - small < DECODED, (small / 2**20, large / 2**20, DECODED / 2**20)
