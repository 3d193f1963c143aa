"""``promptcam-run``: classify and explain image files with an exported model (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.batch.options import DetectionOptions, RunOptions
from promptcam.batch.ray import RayOptions
from promptcam.core.cli import grouped_command, option_group, run_cli, verbose_option
from promptcam.core.errors import PromptCamError
from promptcam.results.formats import DEFAULT_FORMATS
from promptcam.runtime.options import (
    category_list,
    clip_options_of,
    det_categories_option,
    det_threshold_option,
    events_options,
    explain_options,
    given,
    model_options,
    video_options,
)
from promptcam.station.stream import StreamOptions

FILE_OPTIONS = ("workers", "checkpoint_every", "resume", "no_progress", "follow_links", "video_fps",
                "video_max_frames", "per_frame", "events", "camera_from")
STREAM_OPTIONS = ("every", "on_motion", "db", "max_frames", "duration", "stall_timeout")
RAY_OPTIONS = ("ray_address", "ray_actors", "ray_gpus_per_actor")


@grouped_command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@model_options
@explain_options
@option_group(
    "Classes and explanations",
    click.option("--class", "explain_class", default=None, help="Explain this class instead of the predicted one."),
    click.option("--compare", type=click.IntRange(min=0), default=RunOptions.compare, show_default=True,
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
    click.option("--workers", type=click.IntRange(min=1), default=RunOptions.workers, show_default=True,
                 help="Decoding threads."),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=RunOptions.checkpoint_every,
                 show_default=True,
                 help="fsync the journal every N images."),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--follow-links", is_flag=True, default=RunOptions.follow_links,
                 help="Also follow symbolic links in the input folders that lead out of them (by default such "
                      "links are skipped, never read, and listed in the log; links that stay inside are followed)."),
)
@video_options
@option_group(
    "Videos (.mp4 .avi .mov .mkv in the inputs)",
    click.option("--per-frame", is_flag=True,
                 help="Also a row per sampled frame in results.csv and results.json (and with --heatmaps its "
                      "heatmap), besides each clip's verdict."),
)
@events_options
@option_group(
    "Stream mode (--source)",
    click.option("--source", default=None,
                 help="Camera stream instead of files: rtsp://..., /dev/video0, 0 (USB index) or a video file."),
    click.option("--every", default=StreamOptions.every, show_default=True,
                 help="Sample every N seconds (5s) or frames (10f)."),
    click.option("--on-motion", is_flag=True, help="Only classify frames with motion (frame difference)."),
    click.option("--db", type=click.Path(path_type=Path), default=None,
                 help="SQLite results (default OUT/results.sqlite)."),
    click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N classified frames."),
    click.option("--duration", type=click.FloatRange(min=0), default=None, help="Stop after N seconds."),
    click.option("--stall-timeout", type=click.FloatRange(min=0), default=StreamOptions.stall_timeout,
                 show_default=True,
                 help="Restart the capture after this many seconds without a frame."),
)
@option_group(
    "Ray mode (--ray: files over a Ray cluster, the 'ray' extra)",
    click.option("--ray", "use_ray", is_flag=True, help="Spread the run over a Ray cluster."),
    click.option("--ray-address", default=None, help="Cluster address ('auto' joins a running one; default local)."),
    click.option("--ray-actors", type=click.IntRange(min=1), default=RayOptions.actors, show_default=True,
                 help="Predictor actors."),
    click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0), default=RayOptions.gpus_per_actor,
                 show_default=True),
)
@option_group(
    "Detections (MegaDetector batch JSON)",
    click.option("--detections", "detections_file", type=click.Path(path_type=Path), default=None,
                 help="Classify the crops of this detector file's boxes (MegaDetector batch output 1.x) instead of "
                      "whole frames; results.json is that file with classifications added."),
    det_threshold_option,
    det_categories_option,
    click.option("--detections-root", type=click.Path(path_type=Path), default=None,
                 help="Folder the detector file's relative paths start from (default: the input folder; with "
                      "several inputs, the names the run gives, each folder's label first)."),
)
@option_group(
    "Decoding",
    click.option("--decode", type=click.Choice(["cpu", "gpu"]), default=RunOptions.decode, show_default=True,
                 help="JPEG decoding: cpu (OpenCV, DCT-reduced to the size needed) or gpu (nvImageCodec, the "
                      "'gpu-decode' extra, with --engine ort-cuda)."),
)
@verbose_option
@click.pass_context
def main(ctx: click.Context, inputs: tuple[Path, ...], verbose: bool, **given_options: object) -> None:
    """Classify INPUTS (folders, list files, images) or a camera --source; write results and heatmaps.

    The options are grouped by mode (files, --source, --ray); each mode's options dataclass
    (``RunOptions``, ``StreamOptions``, ``RayOptions``) holds their defaults, as the Python API does.
    """
    run_cli(lambda: _run(ctx, inputs, CliValues(given_options)), verbose=verbose)


class CliValues(dict):
    """The command line's values by parameter name, read as attributes (``o.top_k``)."""

    def __getattr__(self, name: str) -> object:
        return self[name]


def _run(ctx: click.Context, inputs: tuple[Path, ...], o: CliValues) -> None:
    from promptcam.runtime.predictor import Predictor

    check_mode(ctx, inputs, o.source, o.use_ray)
    check_combinations(o)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if o.use_ray:
        from promptcam.batch.ray import run_ray

        _report(run_ray(o.model_dir, files_options(inputs, o), ray_options(o), o.batch_size, log=log))
        return
    predictor = Predictor(o.model_dir, o.engine, batch_size=o.batch_size, threads=o.threads, server=o.server,
                          server_wait=o.server_wait)
    if o.explain_class is not None:
        predictor.class_index(o.explain_class)  # unknown class: fail before any work
    click.echo(f"engine {predictor.engine_description}; model {predictor.config.arch}, "
               f"{predictor.config.num_classes} classes, {predictor.manifest.precision}", err=True)
    if o.source is not None:
        from promptcam.station.stream import run_stream

        options = stream_options(o)
        stats = run_stream(predictor, options, log=log)
        click.echo(f"{stats['frames_classified']} frames classified of {stats['frames_seen']} read; "
                   f"results in {options.db}")
        return
    from promptcam.batch.run import run_files

    _report(run_files(predictor, files_options(inputs, o), log=log))


def check_combinations(o: CliValues) -> None:
    """Options that need another mode or option."""
    if o.compare and (o.heatmaps is None or o.use_ray or o.source is not None or o.detections_file is not None):
        raise PromptCamError("--compare writes its sheets beside the heatmaps of a files run: it needs "
                             "--heatmaps DIR, and not --ray, --source or --detections")
    if o.detections_file is not None and o.source is not None:
        raise PromptCamError("--detections classifies files: it cannot be used with --source")
    if o.use_ray and o.heatmaps is not None:
        raise PromptCamError("--ray runs files only, without --heatmaps")
    if o.server is not None and (o.use_ray or o.decode == "gpu"):
        raise PromptCamError("--server classifies on the server: not with --ray or --decode gpu")
    if o.decode == "gpu":
        if o.use_ray or o.source is not None:
            raise PromptCamError("--decode gpu classifies files: it cannot be used with --ray or --source yet")
        from promptcam.runtime.gpu_decode import check_gpu_decode

        check_gpu_decode(o.engine)


def files_options(inputs: tuple[Path, ...], o: CliValues) -> RunOptions:
    """``RunOptions`` of a files (or ``--ray``) run."""
    detections = None if o.detections_file is None else DetectionOptions(
        path=o.detections_file, threshold=o.det_threshold, categories=category_list(o.det_categories),
        root=o.detections_root)
    return RunOptions(inputs=list(inputs), out_dir=o.out_dir, top_k=o.top_k, workers=o.workers, heatmaps=o.heatmaps,
                      explain_class=o.explain_class, traits=o.traits, checkpoint_every=o.checkpoint_every,
                      resume=o.resume, overwrite=o.overwrite, progress=not o.no_progress,
                      formats=(*DEFAULT_FORMATS, "parquet") if o.parquet else DEFAULT_FORMATS,
                      detections=detections, decode=o.decode, compare=o.compare, follow_links=o.follow_links,
                      clips=clip_options_of(o), events=o.events, camera_from=o.camera_from)


def stream_options(o: CliValues) -> StreamOptions:
    return StreamOptions(source=o.source, db=o.db or o.out_dir / "results.sqlite", frames_dir=o.out_dir / "frames",
                         every=o.every, on_motion=o.on_motion, top_k=o.top_k, traits=o.traits, heatmaps=o.heatmaps,
                         max_frames=o.max_frames, duration=o.duration, stall_timeout=o.stall_timeout)


def ray_options(o: CliValues) -> RayOptions:
    return RayOptions(address=o.ray_address, actors=o.ray_actors, gpus_per_actor=o.ray_gpus_per_actor,
                      engine=o.engine, threads_per_actor=o.threads or 1, parquet=o.parquet)


def check_mode(ctx: click.Context, inputs: tuple[Path, ...], source: str | None, use_ray: bool) -> None:
    """One mode per run (files, stream, Ray), and no option of another mode."""
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
        "--ray": given(ctx, *STREAM_OPTIONS, "workers", "checkpoint_every", "resume", "video_fps", "video_max_frames",
                       "per_frame", "events", "camera_from"),
    }[mode]
    if foreign:
        raise PromptCamError(f"{', '.join(foreign)} cannot be used in {mode} mode (see promptcam-run --help)")


def _report(summary) -> None:  # noqa: ANN001 - RunSummary
    click.echo(f"{summary.ok} classified, {summary.failed} failed, {summary.skipped_non_images} non-image "
               f"file(s) skipped in {summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s)"
               + (f"; {summary.videos} clip(s)" if summary.videos else "")
               + (f"; {summary.events} event(s)" if summary.events else ""))
    if summary.refused_links:
        click.echo(f"  {summary.refused_links} symbolic link(s) leading out of the input folders refused "
                   "(--follow-links reads them)")
    for kind, path in summary.outputs.items():
        click.echo(f"  {kind}: {path}")
