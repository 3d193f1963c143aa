"""Crop-trained against tile-trained, on the synthetic world's camera-trap scenes (docs/train-on-crops.md).

For each seed: write the scenes and their md.json (``promptcam.train.scenes``), train prompts on their
crops with ``promptcam train --detections`` on the demo's frozen backbone, export, and classify the
held-out scenes' animal crops with 0, 5, 10 and 20 % margins of foreign background, cut by the run's
crop path; the demo's tile-trained model is scored on the same crops. Prints a markdown table and
writes OUT/crop_training.json.

    python benchmarks/crop_training.py --demo-cache .promptcam-cache/demo --seeds 0 1 2 --out crop_bench

``--demo-cache`` is a ``promptcam demo`` cache (its world, backbone and exported model; built if absent).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from promptcam.export.passes import ExportOptions, export_model
from promptcam.runtime.predictor import Predictor
from promptcam.train.demo import run_demo
from promptcam.train.loop import train_promptcam
from promptcam.train.scenes import (
    CROP_RECIPE,
    SCORE_MARGINS,
    SceneSpec,
    crop_training_options,
    generate_scenes,
    score_margins,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-cache", type=Path, default=Path(".promptcam-cache/demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("crop_bench"))
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    run_demo(args.out / "demo_out", args.demo_cache, log=lambda _: None)  # cached: the tile model and backbone
    tile_model, backbone = args.demo_cache / "model", args.demo_cache / "backbone.pt"
    rows = []
    for seed in args.seeds:
        scenes = generate_scenes(args.out / f"scenes-{seed}", SceneSpec(seed=seed))
        run, model = args.out / f"run-{seed}", args.out / f"model-{seed}"
        started = time.perf_counter()
        result = train_promptcam(crop_training_options(scenes, run, backbone, seed), log=print)
        seconds = time.perf_counter() - started
        export_model(ExportOptions(ckpt=result.best_path, out=model), log=lambda _: None)
        with Predictor(model, "ort-cpu", batch_size=32, threads=args.threads) as crops_model, \
                Predictor(tile_model, "ort-cpu", batch_size=32, threads=args.threads) as tiles_model:
            crop_score, tile_score = score_margins(crops_model, scenes), score_margins(tiles_model, scenes)
        rows.append({"seed": seed, "train_seconds": round(seconds, 1), "best_epoch": result.best_epoch,
                     "crop_trained": {str(m): crop_score.counts[m] for m in SCORE_MARGINS},
                     "tile_trained": {str(m): tile_score.counts[m] for m in SCORE_MARGINS}})
        print(f"seed {seed}: crops {crop_score.row()} | tiles {tile_score.row()} ({seconds:.0f} s training)")
    (args.out / "crop_training.json").write_text(json.dumps({"recipe": CROP_RECIPE, "rows": rows}, indent=1))
    header = " | ".join(f"{m:.0%}" for m in SCORE_MARGINS)
    print(f"\n| seed | model | {header} |\n|---|---|" + "---:|" * len(SCORE_MARGINS))
    for row in rows:
        for kind in ("crop_trained", "tile_trained"):
            cells = " | ".join(f"{r}/{t} ({r / t:.1%})" for r, t in row[kind].values())
            print(f"| {row['seed']} | {kind.replace('_', '-')} | {cells} |")


if __name__ == "__main__":
    main()
