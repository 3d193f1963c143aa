"""``promptcam-bench``: latency and throughput of every backend against eager PyTorch, side by side."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from promptcam.core.cli import deprecated_alias, run_cli, verbose_option

from .backends import BACKENDS


def _bench_model(ckpt: Path | None, quick: bool, work: Path, backbone: str = "dino_vitb16"):  # noqa: ANN202
    """The model to measure: a checkpoint, or random weights of ``backbone`` (speed does not depend on them)."""
    import torch

    from promptcam.models.checkpoint import load_model, save_checkpoint
    from promptcam.models.factory import create_model

    if ckpt is not None:
        return load_model(ckpt), ckpt
    torch.manual_seed(0)
    model = create_model("vit_micro_patch8", 16) if quick else create_model(backbone, 200)
    path = save_checkpoint(model.eval(), work / "bench_model.pt")
    return model.eval(), path


def _weights_key(model: Any) -> str:
    """A digest of the model's config and every tensor (checkpoint files are not byte-stable: pickling)."""
    import hashlib

    digest = hashlib.sha256(repr(model.config).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _quality(backend: Any, pixels: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
             batch: int | None = None) -> dict[str, Any]:
    """Agreement of a backend's answer and explanation with eager float32 on the same weights.

    ``batch``: run ``pixels`` through the backend that many at a time (None: in one call).
    """
    from promptcam.export.validate import compare

    if backend.quality is None:
        return {}
    step = batch or len(pixels)
    parts = [backend.quality(pixels[i:i + step]) for i in range(0, len(pixels), step)]
    logits, attention = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    want = reference[1]
    if attention.ndim == want.ndim - 1:  # the predicted class's maps only: against eager's maps of that class
        want = want[np.arange(len(pixels)), logits.argmax(-1)]
    lg = compare("logits", len(pixels), logits, reference[0])
    at = compare("attention", len(pixels), attention, want)
    return {"max_abs_diff": lg.max_abs_diff, "top1_agreement": lg.top1_agreement,
            "attention_mean_correlation": at.mean_correlation, "attention_min_correlation": at.min_correlation}


def _eager_maps(model: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eager float32 logits and attention maps, on whatever device the model is on."""
    import torch

    from promptcam.models.preprocess import normalize_pixels

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits, attention = model.eval()(normalize_pixels(pixels, model.config).to(device), return_attention=True)
    return logits.float().cpu().numpy(), attention.float().cpu().numpy()


def _real_scale_rows(model: Any, names: list[str], sizes: list[int], work: Path, threads: int,
                     eager_p50: dict[int, float], echo: Any, quality_images: int = 64, **timing: Any) -> dict[str, Any]:
    """The same architecture at the scale of trained checkpoints (logits ~±40): where int8 can fail."""
    from promptcam.export.passes import synthetic_pixels, synthetic_pool
    from promptcam.models.checkpoint import save_checkpoint

    from .backends import Skipped, predictor_backend
    from .checkpoints import real_scale_model
    from .measure import time_backend

    cfg = model.config
    scaled = real_scale_model(cfg.arch, cfg.num_classes)
    folder = work / "real_scale"
    folder.mkdir(exist_ok=True)
    path = save_checkpoint(scaled, folder / "real_scale.pt")
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = predictor_backend(name, path, folder, threads, max(sizes))
        except Skipped as exc:
            skipped[name] = str(exc)
    # quality on images neither the int8 search (export seed 0) nor the timing batches use, in batches
    # of eight; it does not depend on the timed batch size, so every row of a backend reports the same
    quality_pixels = synthetic_pool(quality_images, cfg.img_size, seed=7)
    reference = _eager_maps(scaled, quality_pixels)
    quality = {name: _quality(backend, quality_pixels, reference, batch=8) for name, backend in built.items()}
    rows = []
    for batch in sizes:
        pixels = synthetic_pixels(batch, cfg.img_size, seed=1000 + batch)
        for name, backend in built.items():
            row = asdict(time_backend(name, backend.run, pixels, **timing)) | quality[name]
            row["quality_images"] = quality_images
            if batch in eager_p50:  # same architecture and batch: eager speed does not depend on the weights
                row["speedup_vs_eager_official"] = eager_p50[batch] / row["p50_ms"]
            rows.append(row)
            echo(f"  real-scale {name:<15} batch {batch:<3} p50 {row['p50_ms']:9.1f} ms  "
                 f"top-1 {row['top1_agreement']:.0%}  attention corr worst {row['attention_min_correlation']:.4f}")
    return {"model": f"{cfg.arch} {cfg.img_size}px, C={cfg.num_classes} (real-scale: every parameter perturbed, "
                     f"max |logit| {float(np.abs(reference[0]).max()):.0f})",
            "rows": rows, "backends": {n: b.description for n, b in built.items()}, "skipped": skipped}


def _end_to_end(model_dir: Path, engine: str, pixels_per_second: float, batch: int, threads: int, work: Path,
                count: int) -> dict[str, Any]:
    """Folder throughput of promptcam-run (decode + infer + write) vs pure inference."""
    import cv2

    from promptcam.batch.run import RunOptions, run_files
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


def _served_only(model_dir: Path, threads: int | None, seconds: float | None, out: Path) -> None:
    """``--served``: the served row alone (no torch, an exported model folder)."""
    import json

    from promptcam.runtime.backends.onnxruntime import default_threads

    from .measure import machine_info
    from .served import served_row

    result = served_row(model_dir, threads=threads or default_threads(), seconds=seconds or 5.0, log=click.echo)
    result["machine"] = machine_info()
    out.mkdir(parents=True, exist_ok=True)
    (out / "served.json").write_text(json.dumps(result, indent=1))
    click.echo(f"wrote {out / 'served.json'}")


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


def _profile(built: dict[str, Any], batch: int, threads: int, out: Path) -> dict[str, Any]:
    """One ORT profile of the first built ORT engine at ``batch``, summarised by op type into ``out``."""
    from .profile import profile_model

    source = next((built[n] for n in ("ort-cuda-fp16", "ort-cuda-fp32", "ort-cpu-fp32") if n in built), None)
    if source is None:
        return {"skipped": "no ORT engine among the built backends (ort-cuda-fp16, ort-cuda-fp32, ort-cpu-fp32)"}
    paths = profile_model(source.model_dir / "model.onnx", source.engine, batch, out, threads=threads)
    click.echo(f"profiled {source.name} at batch {batch}: {paths['markdown']}")
    return {"backend": source.name, "batch": batch, "summary": paths["markdown"].name}


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to measure (default: random ViT-B/16 Prompt-CAM, C=200).")
@click.option("--quick", is_flag=True, help="A tiny model instead of ViT-B (seconds).")
@click.option("--backbone", type=click.Choice(["dino_vitb16", "dinov2_vitb14", "bioclip_vitb16"]),
              default="dino_vitb16", show_default=True,
              help="Backbone of the random-weight model (without --ckpt), C=200.")
@click.option("--batch-size", "batches", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@deprecated_alias("--batch", "--batch-size")
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--iters", type=int, default=5, show_default=True)
@click.option("--seconds", type=float, default=None, help="Time budget per measurement instead of --iters.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for torch and ORT (default: all cores).")
@click.option("--e2e-images", type=int, default=64, show_default=True,
              help="Images for the folder measurement (0: off).")
@click.option("--real-size-frames", type=int, default=16, show_default=True,
              help="Frames of the real-size row: 12 MP JPEGs against the same frames pre-shrunk (0: off).")
@click.option("--video-clips", type=click.IntRange(min=0), default=None,
              help="The video row: N 1080p clips against the same sampled frames as JPEGs (default 2; 0 with --quick; "
                   "0: off).")
@click.option("--video-seconds", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="Length of each clip of the video row.")
@click.option("--real-scale/--no-real-scale", default=True, show_default=True,
              help="Also measure on a real-scale checkpoint of the same architecture (logits ~±40).")
@click.option("--real-scale-backends", default="ort-cpu-fp32,ort-cpu-int8,ort-cuda-fp16,trt-fp16", show_default=True,
              help="Backends measured on the real-scale checkpoint.")
@click.option("--eager-batch", "eager_batches", default=None,
              help="Batch sizes of the PyTorch rows (eager*), a subset of --batch-size (default: all of them).")
@click.option("--peer-device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="Device of eager-fp16/eager-compile-fp16. cpu: autocast bfloat16, a code-path check only.")
@click.option("--compile-backend", default="inductor", show_default=True,
              help="torch.compile backend of eager-compile-fp16 ('eager': plumbing only, no compilation).")
@click.option("--compile-mode", default=None, help="torch.compile mode of eager-compile-fp16 (default: torch's).")
@click.option("--profile-batch", type=int, default=0, show_default=True,
              help="Also profile the ORT engine at this batch: ort_profile_b<N>.md/json in OUT (0: off).")
@click.option("--served", "served_model", type=click.Path(path_type=Path), default=None, metavar="MODEL_DIR",
              help="Only the served row: MODEL_DIR through promptcam serve at concurrency 1, 4, 8 against the same "
                   "model locally (serve extra); writes served.json to OUT.")
@click.option("--work", type=click.Path(path_type=Path), default=None,
              help="Keep exports here and reuse them across runs (keyed by a digest of the weights).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench_out"), show_default=True)
@verbose_option
def main(ckpt: Path | None, quick: bool, backbone: str, batches: str, backends: str, warmup: int, iters: int,
         seconds: float | None, threads: int | None, e2e_images: int, real_size_frames: int, video_clips: int | None,
         video_seconds: float, real_scale: bool,
         real_scale_backends: str, eager_batches: str | None, peer_device: str, compile_backend: str,
         compile_mode: str | None, profile_batch: int, served_model: Path | None, work: Path | None, out: Path,
         verbose: bool) -> None:
    """Measure every backend side by side; write bench.json, bench.md and bench.png to OUT."""

    def body() -> None:
        if served_model is not None:
            _served_only(served_model, threads, seconds, out)
            return
        import torch

        from promptcam.runtime.backends.onnxruntime import default_threads

        from .backends import (
            PRIMARY_ORDER,
            TORCH_BACKENDS,
            Skipped,
            bound_backend,
            eager_official,
            eager_project,
            plain_vit,
            predictor_backend,
        )
        from .measure import GpuMemory, machine_info, time_backend
        from .peers import eager_peer
        from .report import TENSORRT_NOTE, write_reports

        n_threads = threads or default_threads()
        torch.set_num_threads(n_threads)
        sizes = [int(b) for b in batches.split(",")]
        eager_sizes = sizes if eager_batches is None else [int(b) for b in eager_batches.split(",")]
        if not set(eager_sizes) <= set(sizes):
            raise click.BadParameter(f"--eager-batch {eager_sizes} must be a subset of --batch-size {sizes}")
        wanted = [b.strip() for b in backends.split(",") if b.strip()]
        unknown = set(wanted) - set(BACKENDS)
        if unknown:
            raise click.BadParameter(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
        with tempfile.TemporaryDirectory() as tmp:
            work_dir = Path(tmp) if work is None else work
            work_dir.mkdir(parents=True, exist_ok=True)
            model, path = _bench_model(ckpt, quick, work_dir, backbone)
            if work is not None:  # exports of other weights must never be reused
                work_dir = work / _weights_key(model)
                work_dir.mkdir(exist_ok=True)
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
                    elif name in ("eager-fp16", "eager-compile-fp16"):
                        built[name] = eager_peer(name, model, device=peer_device, compile_mode=compile_mode,
                                                 compile_backend=compile_backend if "compile" in name else None)
                    elif name in ("plain-vit", "plain-vit-cuda"):
                        built[name] = plain_vit(model, n_threads, cuda=name == "plain-vit-cuda")
                    elif name.endswith(("-graph", "-device")):
                        built[name] = bound_backend(name, path, work_dir, n_threads)
                    else:
                        built[name] = predictor_backend(name, path, work_dir, n_threads, max(sizes))
                except Skipped as exc:
                    skipped[name] = str(exc)
                    click.echo(f"  skip {name}: {exc}")
                if gpu and name in built:
                    gpu_growth[name] = gpu.used_mib() - before
            rows = []
            for batch in sizes:
                pixels = np.random.default_rng(batch).integers(0, 256, (batch, cfg.img_size, cfg.img_size, 3),
                                                               dtype=np.uint8)
                measured = {n: b for n, b in built.items() if n not in TORCH_BACKENDS or batch in eager_sizes}
                reference = measured["eager-official"].run(pixels) if "eager-official" in measured else None
                # answer and explanation of every row against eager float32 on the same weights
                maps_reference = _eager_maps(model, pixels)
                timings = {}
                for name, backend in measured.items():
                    before = gpu.used_mib() if gpu else 0.0
                    if gpu:
                        gpu.reset_torch_peak()
                    timing = time_backend(name, backend.run, pixels, warmup=warmup, iters=iters, seconds=seconds)
                    row = asdict(timing)
                    if backend.first_call_s is not None and batch in backend.first_call_s:
                        # torch.compile specialises on the batch size: its first call at a size compiles
                        row["first_call_s"] = backend.first_call_s[batch]
                        row["compile_s"] = max(0.0, row["first_call_s"] - timing.p50_ms / 1000)
                    if gpu:
                        # torch rows: the allocator's peak; ORT/TensorRT rows: device memory this backend took
                        gpu_growth[name] += gpu.used_mib() - before
                        row["gpu_mib"] = gpu.torch_peak_mib() if backend.on_torch_cuda else gpu_growth[name]
                    if reference is not None and backend.comparable:
                        logits = backend.run(pixels)
                        row["max_abs_diff"] = float(np.abs(logits - reference).max())
                        row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).mean())
                    if backend.comparable:
                        row |= _quality(backend, pixels, maps_reference)
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
                                      "skipped": skipped, "tensorrt_note": TENSORRT_NOTE}
            click.echo(f"note: {TENSORRT_NOTE}")
            if real_scale:
                eager_p50 = {r["batch"]: r["p50_ms"] for r in rows if r["backend"] == "eager-official"}
                names = [n.strip() for n in real_scale_backends.split(",") if n.strip()]
                result["real_scale"] = _real_scale_rows(model, names, sizes, work_dir, n_threads, eager_p50, click.echo,
                                                        warmup=warmup, iters=iters, seconds=seconds)
            primary = next((built[n] for n in PRIMARY_ORDER if n in built), None)
            if primary is not None:
                result["traits"] = _trait_cost(primary.model_dir, primary.engine, n_threads)
                if e2e_images:
                    best_batch = max(sizes)
                    pure = next(r for r in rows if r["backend"] == primary.name and r["batch"] == best_batch)
                    result["end_to_end"] = _end_to_end(primary.model_dir, primary.engine, pure["images_per_second"],
                                                       best_batch, n_threads, work_dir, e2e_images)
                if real_size_frames:
                    from promptcam.benchmarks.realsize import real_size_row

                    # on a CPU the int8 export when built: the fastest model leaves decoding the least room
                    sized = primary if primary.on_gpu else built.get("ort-cpu-int8", primary)
                    real = result["real_size"] = real_size_row(sized.model_dir, sized.engine, threads=n_threads,
                                                               frames=real_size_frames, batch=max(sizes))
                    real["backend"] = sized.name
                    click.echo(f"  real-size: 12 MP {real['large_img_per_s']:.1f} img/s, pre-shrunk "
                               f"{real['small_img_per_s']:.1f} img/s, ratio {real['ratio']}")
                clips = video_clips if video_clips is not None else 0 if quick else 2
                if clips:
                    from promptcam.benchmarks.videorate import video_row

                    sized = primary if primary.on_gpu else built.get("ort-cpu-int8", primary)
                    video = result["video"] = video_row(sized.model_dir, sized.engine, clips=clips,
                                                        seconds=video_seconds, threads=n_threads, batch=max(sizes))
                    video["backend"] = sized.name
                    click.echo(f"  video: {video['clip_frames_per_s']:.1f} frames/s from clips, "
                               f"{video['jpeg_frames_per_s']:.1f} from the same frames as JPEGs")
            if profile_batch:
                result["profile"] = _profile(built, profile_batch, n_threads, out)
            paths = write_reports(result, out)
        click.echo(paths["markdown"].read_text())
        click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")

    run_cli(body, verbose=verbose)
