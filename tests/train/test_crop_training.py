"""Crop training on the synthetic world's camera-trap scenes, small: the claim of docs/train-on-crops.md
(held-out crops with 0-20 % margins of foreign background classified right) on 4 of its 16 species and
a tenth of its crops, against the demo's tile-trained model on the same crops. The full multi-seed measurement is
``benchmarks/crop_training.py``."""

from __future__ import annotations

from promptcam.export.passes import ExportOptions, export_model
from promptcam.runtime.predictor import Predictor
from promptcam.train.loop import train_promptcam
from promptcam.train.scenes import SceneSpec, crop_training_options, generate_scenes, score_margins
from promptcam.train.synthetic import WorldSpec


def test_crop_trained_model_reads_crops_of_every_margin(trained_world, tmp_path):
    spec = SceneSpec(world=WorldSpec(head_colours=2, tail_colours=2), train_per_class=30, val_per_class=12, seed=11)
    scenes = generate_scenes(tmp_path / "scenes", spec)
    backbone = trained_world["ckpt"].parent.parent / "backbone.pt"
    result = train_promptcam(crop_training_options(scenes, tmp_path / "run", backbone, seed=0, epochs=10,
                                                   batch_size=16), log=lambda _: None)
    export_model(ExportOptions(ckpt=result.best_path, out=tmp_path / "model"), log=lambda _: None)
    with Predictor(tmp_path / "model", "ort-cpu", batch_size=32) as crops_model, \
            Predictor(trained_world["model"], "ort-cpu", batch_size=32) as tiles_model:
        crops, tiles = score_margins(crops_model, scenes), score_margins(tiles_model, scenes)
    print(f"crop-trained {crops.row()}\ntile-trained {tiles.row()}")
    assert min(total for _, total in crops.counts.values()) >= 40
    for margin in crops.counts:
        assert crops.accuracy(margin) >= 0.9, (margin, crops.row())
    # the tile-trained model, scored by class name on the same crops: right on the tile itself, and worse
    # than the crop-trained model with a 20 % margin (measured, scenes seed 11: 56/64 against 63/64)
    assert tiles.accuracy(0.0) >= 0.9, tiles.row()
    assert crops.accuracy(0.2) >= tiles.accuracy(0.2), (crops.row(), tiles.row())
