"""JPEG DCT-domain reduction: decoding at the size the model needs gives the predictions of a full decode,
with EXIF orientation applied and the full photo's size reported."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from camera_trap_scenes import val_tiles, write_jpeg

from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime import Predictor
from promptcam.runtime.images import decode_image, full_size_of, reduced_size
from promptcam.runtime.model_input import frame_reduction


def test_reduction_choice_and_reported_size():
    assert frame_reduction(4000, 3000, 224) == 8  # 500x375 still covers 224
    assert frame_reduction(1600, 1200, 224) == 4 and frame_reduction(640, 480, 224) == 2
    assert frame_reduction(300, 200, 224) == 1
    assert frame_reduction(4000, 3000, 224, min_long_side=1000) == 4  # the heatmap preview bound
    assert frame_reduction(800, 600, 64, min_long_side=1000) == 1  # smaller photos: full size
    assert reduced_size(1501, 1001, 8) == (188, 126)  # libjpeg rounds up
    rgb = np.zeros((30, 40, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    assert decode_image(jpeg, reduction=2).shape == (15, 20, 3)
    png = cv2.imencode(".png", rgb)[1].tobytes()
    assert decode_image(png, reduction=8).shape == (30, 40, 3)  # only JPEG decodes reduced
    assert full_size_of((4000, 3000), np.zeros((375, 500, 3)), 8) == (3000, 4000)
    assert full_size_of((4000, 3000), np.zeros((500, 375, 3)), 8) == (4000, 3000)  # EXIF turned it


@pytest.fixture(scope="module")
def frames(trained_world, tmp_path_factory):
    """Held-out world images upscaled to 12 MP (one per class) and to 1600x1200 (two per class); one
    12 MP frame is also stored turned, with EXIF orientation 6."""
    root = tmp_path_factory.mktemp("upscaled")
    tiles = val_tiles(trained_world["world"], per_class=3)
    truth = {}
    for i, (tile, cls) in enumerate(tiles):
        size = (4000, 3000) if i % 3 == 0 else (1600, 1200)
        name = f"{'mp12' if size[0] == 4000 else 'mp2'}/{i:03d}.jpg"
        write_jpeg(root / name, cv2.resize(tile, size, interpolation=cv2.INTER_LINEAR), quality=88)
        truth[name] = cls
    tile, _ = tiles[0]
    write_jpeg(root / "exif" / "turned.jpg", cv2.resize(tile, (4000, 3000), interpolation=cv2.INTER_LINEAR),
               quality=88, orientation=6)
    return root, truth


def test_reduced_decoding_predicts_as_full_decoding(trained_world, frames, tmp_path):
    root, truth = frames
    results = {}
    with Predictor(trained_world["model"], "ort-cpu", batch_size=8) as predictor:
        for reduce in (True, False):
            out = tmp_path / f"reduce_{reduce}"
            run_files(predictor, RunOptions(inputs=[root], out_dir=out, progress=False, reduce_decode=reduce),
                      log=lambda _: None)
            results[reduce] = {json.loads(line)["file"]: json.loads(line)
                               for line in (out / "results.jsonl").open(encoding="utf-8")}
    assert len(results[True]) == len(truth) + 1 and all("failure" not in r for r in results[True].values())
    agree = np.mean([results[True][f]["top_k"][0]["index"] == results[False][f]["top_k"][0]["index"]
                     for f in results[True]])
    accuracy = np.mean([results[True][f]["top_k"][0]["index"] == cls for f, cls in truth.items()])
    print(f"top-1 agreement reduced vs full {agree:.3f} over {len(results[True])}; accuracy {accuracy:.3f}")
    assert agree >= 0.99
    gaps = [abs(a["probability"] - b["probability"]) for f in results[True]
            for a, b in zip(results[True][f]["top_k"], results[False][f]["top_k"], strict=True)]
    assert max(gaps) < 0.05
    # EXIF orientation: the file stored 3000x4000 with orientation 6 is the upright 4000x3000 frame
    turned, upright = results[True]["exif/turned.jpg"], results[True]["mp12/000.jpg"]
    assert (turned["width"], turned["height"]) == (upright["width"], upright["height"]) == (4000, 3000)
    assert [c["index"] for c in turned["top_k"]] == [c["index"] for c in upright["top_k"]]
    for a, b in zip(turned["top_k"], upright["top_k"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=0.02)


def test_real_size_measurement_runs_both_folders(trained_world):
    from promptcam.benchmarks.realsize import measure_real_size

    with Predictor(trained_world["model"], "ort-cpu", batch_size=8) as predictor:
        result = measure_real_size(predictor, frames=2, repeats=1)
    assert result["size"] == "4000x3000" and result["frames"] == 2 and result["mean_file_mb"] > 0.5
    assert result["ratio"] == pytest.approx(result["large_img_per_s"] / result["small_img_per_s"], rel=0.01)
    assert min(result["small_img_per_s"], result["large_img_per_s"], result["large_full_decode_img_per_s"]) > 0
