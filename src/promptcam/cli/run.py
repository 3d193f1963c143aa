"""``promptcam-run``: classify and explain image files with an exported model (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import grouped_command, option_group, run_cli, verbose_option
from promptcam.runtime.options import (
    category_list,
    det_categories_option,
    det_threshold_option,
    explain_options,
    given,
    model_options,
)

FILE_OPTIONS = ("workers", "checkpoint_every", "resume", "no_progress")
STREAM_OPTIONS = ("every", "on_motion", "db", "max_frames", "duration", "stall_timeout")
RAY_OPTIONS = ("ray_address", "ray_actors", "ray_gpus_per_actor")


@grouped_command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@model_options
@explain_options
@option_group(
    "Classes and explanations",
    click.option("--class", "explain_class", default=None, help="Explain this class instead of the predicted one."),
    click.option("--compare", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Files: beside each heatmap, NAME.compare.jpg with the maps of the K most probable classes, "
                      "each with its name and probability (and the --class one, 'why this class and not that "
                      "one'); needs --heatmaps. 0: off."),
)
@option_group(
    "Output",
    click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("promptcam_results"),
                 show_default=True, help="Folder for results.json (MegaDetector 1.6), results.csv, results.jsonl."),
    click.option("--overwrite", is_flag=True, help="Start over even if --out holds a previous run."),
    click.option("--parquet", is_flag=True, help="Also write results.parquet (needs pyarrow)."),
)
@option_group(
    "Files mode (INPUTS: folders, list files, images)",
    click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Decoding threads."),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=256, show_default=True,
                 help="fsync the journal every N images."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
)
@option_group(
    "Stream mode (--source)",
    click.option("--source", default=None,
                 help="Camera stream instead of files: rtsp://..., /dev/video0, 0 (USB index) or a video file."),
    click.option("--every", default="5s", show_default=True, help="Sample every N seconds (5s) or frames (10f)."),
    click.option("--on-motion", is_flag=True, help="Only classify frames with motion (frame difference)."),
    click.option("--db", type=click.Path(path_type=Path), default=None,
                 help="SQLite results (default OUT/results.sqlite)."),
    click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N classified frames."),
    click.option("--duration", type=click.FloatRange(min=0), default=None, help="Stop after N seconds."),
    click.option("--stall-timeout", type=click.FloatRange(min=0), default=15.0, show_default=True,
                 help="Restart the capture after this many seconds without a frame."),
)
@option_group(
    "Ray mode (--ray: files over a Ray cluster, the 'ray' extra)",
    click.option("--ray", "use_ray", is_flag=True, help="Spread the run over a Ray cluster."),
    click.option("--ray-address", default=None, help="Cluster address ('auto' joins a running one; default local)."),
    click.option("--ray-actors", type=click.IntRange(min=1), default=2, show_default=True, help="Predictor actors."),
    click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True),
)
@option_group(
    "Detections (MegaDetector batch JSON)",
    click.option("--detections", "detections_file", type=click.Path(path_type=Path), default=None,
                 help="Classify the crops of this detector file's boxes (MegaDetector batch output 1.x) instead of "
                      "whole frames; results.json is that file with classifications added."),
    det_threshold_option,
    det_categories_option,
    click.option("--detections-root", type=click.Path(path_type=Path), default=None,
                 help="Folder the detector file's relative paths start from (default: each input folder)."),
)
@option_group(
    "Decoding",
    click.option("--decode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
                 help="JPEG decoding: cpu (OpenCV, DCT-reduced to the size needed) or gpu (nvImageCodec, the "
                      "'gpu-decode' extra, with --engine ort-cuda)."),
)
@verbose_option
@click.pass_context
def main(ctx: click.Context, inputs: tuple[Path, ...], model_dir: Path, engine: str, batch_size: int,
         threads: int | None, top_k: int, traits: int, heatmaps: Path | None, explain_class: str | None, compare: int,
         out_dir: Path, overwrite: bool, parquet: bool, workers: int, checkpoint_every: int, resume: bool,
         no_progress: bool, source: str | None, every: str, on_motion: bool, db: Path | None,
         max_frames: int | None, duration: float | None, stall_timeout: float, use_ray: bool,
         ray_address: str | None, ray_actors: int, ray_gpus_per_actor: float, detections_file: Path | None,
         det_threshold: float, det_categories: str, detections_root: Path | None, decode: str,
         verbose: bool) -> None:
    """Classify INPUTS (folders, list files, images) or a camera --source; write results and heatmaps."""

    def body() -> None:
        from promptcam.batch.run import RunOptions, run_files
        from promptcam.core.errors import PromptCamError
        from promptcam.results.formats import DEFAULT_FORMATS
        from promptcam.runtime.predictor import Predictor

        check_mode(ctx, inputs, source, use_ray)
        if compare and (heatmaps is None or use_ray or source is not None or detections_file is not None):
            raise PromptCamError("--compare writes its sheets beside the heatmaps of a files run: it needs "
                                 "--heatmaps DIR, and not --ray, --source or --detections")
        if detections_file is not None and source is not None:
            raise PromptCamError("--detections classifies files: it cannot be used with --source")
        if decode == "gpu":
            if use_ray or source is not None:
                raise PromptCamError("--decode gpu classifies files: it cannot be used with --ray or --source yet")
            from promptcam.runtime.gpu_decode import check_gpu_decode

            check_gpu_decode(engine)
        if use_ray:
            from promptcam.batch.ray import RayOptions, run_ray

            if heatmaps is not None:
                raise PromptCamError("--ray runs files only, without --heatmaps")
            summary = run_ray(model_dir, RunOptions(inputs=list(inputs), out_dir=out_dir, top_k=top_k,
                                                    explain_class=explain_class, traits=traits, overwrite=overwrite,
                                                    detections=_detection_options(detections_file, det_threshold,
                                                                                  det_categories, detections_root)),
                              RayOptions(address=ray_address, actors=ray_actors, gpus_per_actor=ray_gpus_per_actor,
                                         engine=engine, threads_per_actor=threads or 1, parquet=parquet),
                              batch_size, log=lambda m: click.echo(m, err=True))
            _report(summary)
            return
        predictor = Predictor(model_dir, engine, batch_size=batch_size, threads=threads)
        if explain_class is not None:
            predictor.class_index(explain_class)  # unknown class: fail before any work
        click.echo(f"engine {predictor.engine_description}; model {predictor.config.arch}, "
                   f"{predictor.config.num_classes} classes, {predictor.manifest.precision}", err=True)
        if source is not None:
            from promptcam.station.stream import StreamOptions, run_stream

            stats = run_stream(predictor, StreamOptions(
                source=source, db=db or out_dir / "results.sqlite", frames_dir=out_dir / "frames", every=every,
                on_motion=on_motion, top_k=top_k, traits=traits, heatmaps=heatmaps, max_frames=max_frames,
                duration=duration, stall_timeout=stall_timeout), log=lambda m: click.echo(m, err=True))
            click.echo(f"{stats['frames_classified']} frames classified of {stats['frames_seen']} read; "
                       f"results in {db or out_dir / 'results.sqlite'}")
            return
        options = RunOptions(inputs=list(inputs), out_dir=out_dir, top_k=top_k, workers=workers, heatmaps=heatmaps,
                             explain_class=explain_class, traits=traits, checkpoint_every=checkpoint_every,
                             resume=resume, overwrite=overwrite, progress=not no_progress,
                             formats=(*DEFAULT_FORMATS, "parquet") if parquet else DEFAULT_FORMATS,
                             detections=_detection_options(detections_file, det_threshold, det_categories,
                                                           detections_root), decode=decode, compare=compare)
        summary = run_files(predictor, options, log=lambda m: click.echo(m, err=True))
        _report(summary)

    run_cli(body, verbose=verbose)


def check_mode(ctx: click.Context, inputs: tuple[Path, ...], source: str | None, use_ray: bool) -> None:
    """One mode per run (files, stream, Ray), and no option of another mode."""
    from promptcam.core.errors import PromptCamError

    if source is not None and inputs:
        raise PromptCamError("give either --source or file inputs, not both")
    if source is None and not inputs:
        raise PromptCamError("no inputs: give image folders, list files or images (or --source)")
    if use_ray and source is not None:
        raise PromptCamError("--ray runs files, not a --source stream")
    mode = "--ray" if use_ray else "--source" if source is not None else "files"
    foreign = {
        "files": given(ctx, *STREAM_OPTIONS, *RAY_OPTIONS),
        "--source": given(ctx, *FILE_OPTIONS, *RAY_OPTIONS, "overwrite", "parquet"),
        "--ray": given(ctx, *STREAM_OPTIONS, "workers", "checkpoint_every", "resume"),
    }[mode]
    if foreign:
        raise PromptCamError(f"{', '.join(foreign)} cannot be used in {mode} mode (see promptcam-run --help)")


def _detection_options(path: Path | None, threshold: float, categories: str, root: Path | None):  # noqa: ANN202
    """``DetectionOptions`` of ``--detections`` (None without it)."""
    if path is None:
        return None
    from promptcam.batch.options import DetectionOptions

    return DetectionOptions(path=path, threshold=threshold, categories=category_list(categories), root=root)


def _report(summary) -> None:  # noqa: ANN001 - RunSummary, imported lazily
    click.echo(f"{summary.ok} classified, {summary.failed} failed, {summary.skipped_non_images} non-image "
               f"file(s) skipped in {summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s)")
    for kind, path in summary.outputs.items():
        click.echo(f"  {kind}: {path}")
