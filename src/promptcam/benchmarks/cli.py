"""``promptcam-bench``: latency and throughput of every backend against eager PyTorch, side by side."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from promptcam.core.cli import run_cli

from .backends import BACKENDS


def _bench_model(ckpt: Path | None, quick: bool, work: Path):  # noqa: ANN202
    """The model to measure: a checkpoint, or random weights (speed does not depend on them)."""
    import torch

    from promptcam.models.checkpoint import load_model, save_checkpoint
    from promptcam.models.factory import create_model

    if ckpt is not None:
        return load_model(ckpt), ckpt
    torch.manual_seed(0)
    model = create_model("vit_micro_patch8", 16) if quick else create_model("dino_vitb16", 200)
    path = save_checkpoint(model.eval(), work / "bench_model.pt")
    return model.eval(), path


def _end_to_end(model_dir: Path, engine: str, pixels_per_second: float, batch: int, threads: int, work: Path,
                count: int) -> dict[str, Any]:
    """Folder throughput of promptcam-run (decode + infer + write) vs pure inference."""
    import cv2

    from promptcam.runtime.pipeline import RunOptions, run_files
    from promptcam.runtime.predictor import Predictor

    folder = work / "e2e_images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), base)
    predictor = Predictor(model_dir, engine, batch_size=batch, threads=threads)
    # decoding threads: one per core, as a GPU box would be configured (decode is the bottleneck there)
    options = RunOptions(inputs=[folder], out_dir=work / "e2e_out", overwrite=True, progress=False,
                         workers=max(4, threads))
    summary = run_files(predictor, options, log=lambda _: None)
    return {"engine": predictor.engine_description, "batch": batch, "decode_workers": options.workers,
            "images": count,
            "folder_images_per_second": summary.images_per_second,
            "pure_inference_images_per_second": pixels_per_second,
            "ratio": summary.images_per_second / pixels_per_second}


def _trait_cost(model_dir: Path, engine: str, threads: int, repeats: int = 5) -> dict[str, Any]:
    """Trait ranking (k=4) of the predicted class vs one inference, batch 1."""
    from promptcam.runtime.predictor import Predictor

    predictor = Predictor(model_dir, engine, batch_size=1, threads=threads)
    size = predictor.config.img_size
    pixels = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), dtype=np.uint8)

    def best(**kw: Any) -> float:
        predictor.predict_pixels(pixels, [(size, size)], **kw)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict_pixels(pixels, [(size, size)], **kw)
            times.append(time.perf_counter() - start)
        return min(times)

    plain, ranked = best(), best(traits=4)
    heads = predictor.config.num_heads
    official_passes = sum(range(4 + 1, heads + 1)) if heads > 4 else 0
    return {"engine": predictor.engine_description, "inference_ms": plain * 1000,
            "inference_plus_ranking_ms": ranked * 1000, "ratio": ranked / plain,
            "official_forward_passes_replaced": official_passes}


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to measure (default: random ViT-B/16 Prompt-CAM, C=200).")
@click.option("--quick", is_flag=True, help="A tiny model instead of ViT-B (seconds).")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--iters", type=int, default=5, show_default=True)
@click.option("--seconds", type=float, default=None, help="Time budget per measurement instead of --iters.")
@click.option("--threads", type=int, default=None, help="Threads for torch and ORT (default: all cores).")
@click.option("--e2e-images", type=int, default=64, show_default=True,
              help="Images for the folder measurement (0: off).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_out"), show_default=True)
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
def main(ckpt: Path | None, quick: bool, batches: str, backends: str, warmup: int, iters: int, seconds: float | None,
         threads: int | None, e2e_images: int, out: Path, verbose: bool) -> None:
    """Measure every backend side by side; write bench.json, bench.md and bench.png to OUT."""

    def body() -> None:
        import torch

        from promptcam.runtime.backends.onnxruntime import default_threads

        from .backends import PRIMARY_ORDER, Skipped, eager_official, eager_project, plain_vit, predictor_backend
        from .measure import GpuMemory, machine_info, time_backend
        from .report import write_reports

        n_threads = threads or default_threads()
        torch.set_num_threads(n_threads)
        sizes = [int(b) for b in batches.split(",")]
        wanted = [b.strip() for b in backends.split(",") if b.strip()]
        unknown = set(wanted) - set(BACKENDS)
        if unknown:
            raise click.BadParameter(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model, path = _bench_model(ckpt, quick, work)
            cfg = model.config
            label = f"{cfg.arch} {cfg.img_size}px, C={cfg.num_classes}" + (" (random weights)" if ckpt is None else "")
            click.echo(f"benchmarking {label}, batches {sizes}, {n_threads} threads")
            gpu = GpuMemory() if torch.cuda.is_available() else None
            built, skipped, gpu_growth = {}, {}, {}
            for name in wanted:
                before = gpu.used_mib() if gpu else 0.0
                try:
                    if name == "eager-official":
                        built[name] = eager_official(model)
                    elif name == "eager":
                        built[name] = eager_project(model)
                    elif name in ("plain-vit", "plain-vit-cuda"):
                        built[name] = plain_vit(model, n_threads, cuda=name == "plain-vit-cuda")
                    else:
                        built[name] = predictor_backend(name, path, work, n_threads, max(sizes))
                except Skipped as exc:
                    skipped[name] = str(exc)
                    click.echo(f"  skip {name}: {exc}")
                if gpu and name in built:
                    gpu_growth[name] = gpu.used_mib() - before
            rows = []
            for batch in sizes:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, cfg.img_size, cfg.img_size, 3),
                                                               dtype=np.uint8)
                reference = built["eager-official"].run(pixels) if "eager-official" in built else None
                timings = {}
                for name, backend in built.items():
                    before = gpu.used_mib() if gpu else 0.0
                    if gpu:
                        gpu.reset_torch_peak()
                    timing = time_backend(name, backend.run, pixels, warmup=warmup, iters=iters, seconds=seconds)
                    row = asdict(timing)
                    if gpu:
                        # torch rows: the allocator's peak; ORT/TensorRT rows: device memory this backend took
                        gpu_growth[name] += gpu.used_mib() - before
                        row["gpu_mib"] = gpu.torch_peak_mib() if backend.on_torch_cuda else gpu_growth[name]
                    if reference is not None and backend.comparable:
                        logits = backend.run(pixels)
                        row["max_abs_diff"] = float(np.abs(logits - reference).max())
                        row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).mean())
                    timings[name] = row
                    click.echo(f"  {name:<15} batch {batch:<3} p50 {timing.p50_ms:9.1f} ms  "
                               f"{timing.images_per_second:8.1f} img/s")
                for row in timings.values():
                    if "eager-official" in timings:
                        row["speedup_vs_eager_official"] = timings["eager-official"]["p50_ms"] / row["p50_ms"]
                    # GPU rows against the floor on the GPU, CPU rows against the floor on the CPU
                    floor = "plain-vit-cuda" if built[row["backend"]].on_gpu else "plain-vit"
                    if floor in timings and not row["backend"].startswith("plain-vit"):
                        row["cost_vs_plain_vit"] = row["p50_ms"] / timings[floor]["p50_ms"]
                rows += timings.values()
            result: dict[str, Any] = {"model": label, "threads": n_threads, "machine": machine_info(), "rows": rows,
                                      "backends": {name: b.description for name, b in built.items()},
                                      "skipped": skipped}
            primary = next((built[n] for n in PRIMARY_ORDER if n in built), None)
            if primary is not None:
                result["traits"] = _trait_cost(primary.model_dir, primary.engine, n_threads)
                if e2e_images:
                    best_batch = max(sizes)
                    pure = next(r for r in rows if r["backend"] == primary.name and r["batch"] == best_batch)
                    result["end_to_end"] = _end_to_end(primary.model_dir, primary.engine, pure["images_per_second"],
                                                       best_batch, n_threads, work, e2e_images)
            paths = write_reports(result, out)
        click.echo(paths["markdown"].read_text())
        click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")

    run_cli(body, verbose=verbose)
