"""``promptcam-run``: classify and explain image files with an exported model (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from promptcam.core.cli import run_cli

from .backends import ENGINES


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="Model directory written by promptcam-export.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--workers", type=int, default=4, show_default=True, help="Decoding threads.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("promptcam_results"),
              show_default=True, help="Folder for results.json (MegaDetector 1.6), results.csv, results.jsonl.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--heatmaps", type=click.Path(path_type=Path), default=None, help="Write heatmap overlays here.")
@click.option("--class", "explain_class", default=None, help="Explain this class instead of the predicted one.")
@click.option("--traits", type=int, default=0, show_default=True, help="Rank trait heads and keep K (0: off).")
@click.option("--checkpoint-every", type=int, default=256, show_default=True, help="fsync the journal every N images.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a previous run.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--source", default=None,
              help="Camera stream instead of files: rtsp://..., /dev/video0, 0 (USB index) or a video file.")
@click.option("--every", default="5s", show_default=True, help="Stream sampling: every N seconds (5s) or frames (10f).")
@click.option("--on-motion", is_flag=True, help="Stream: only classify frames with motion (frame difference).")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="Stream: SQLite results (default OUT/results.sqlite).")
@click.option("--max-frames", type=int, default=None, help="Stream: stop after N classified frames.")
@click.option("--duration", type=float, default=None, help="Stream: stop after N seconds.")
@click.option("--ray", "use_ray", is_flag=True, help="Spread the run over a Ray cluster (the 'ray' extra).")
@click.option("--ray-address", default=None, help="Ray cluster address ('auto' joins a running one; default local).")
@click.option("--ray-actors", type=int, default=2, show_default=True, help="Predictor actors.")
@click.option("--ray-gpus-per-actor", type=float, default=0.0, show_default=True)
@click.option("--parquet", is_flag=True, help="Also write results.parquet (needs pyarrow).")
@click.option("--stall-timeout", type=float, default=15.0, show_default=True,
              help="Stream: restart the capture after this many seconds without a frame.")
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
def main(inputs: tuple[Path, ...], model_dir: Path, engine: str, batch_size: int, workers: int, threads: int | None,
         out_dir: Path, top_k: int, heatmaps: Path | None, explain_class: str | None, traits: int,
         checkpoint_every: int, resume: bool, overwrite: bool, no_progress: bool, source: str | None, every: str,
         on_motion: bool, db: Path | None, max_frames: int | None, duration: float | None, use_ray: bool,
         ray_address: str | None, ray_actors: int, ray_gpus_per_actor: float, parquet: bool, stall_timeout: float,
         verbose: bool) -> None:
    """Classify INPUTS (folders, list files, images) or a camera --source; write results and heatmaps."""

    def body() -> None:
        from promptcam.core.errors import PromptCamError

        from .pipeline import RunOptions, run_files
        from .predictor import Predictor

        if source is not None and inputs:
            raise PromptCamError("give either --source or file inputs, not both")
        if source is None and not inputs:
            raise PromptCamError("no inputs: give image folders, list files or images (or --source)")
        if batch_size < 1 or top_k < 1 or traits < 0:
            raise PromptCamError("--batch-size and --top-k must be >= 1 and --traits >= 0")
        if use_ray:
            from .pipeline import RunOptions
            from .ray_batch import RayOptions, run_ray

            if source is not None or heatmaps is not None or resume:
                raise PromptCamError("--ray runs files only, without --heatmaps or --resume")
            summary = run_ray(model_dir, RunOptions(inputs=list(inputs), out_dir=out_dir, top_k=top_k,
                                                    explain_class=explain_class, traits=traits),
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
            from .stream import StreamOptions, run_stream

            stats = run_stream(predictor, StreamOptions(
                source=source, db=db or out_dir / "results.sqlite", frames_dir=out_dir / "frames", every=every,
                on_motion=on_motion, top_k=top_k, traits=traits, heatmaps=heatmaps, max_frames=max_frames,
                duration=duration, stall_timeout=stall_timeout), log=lambda m: click.echo(m, err=True))
            click.echo(f"{stats['frames_classified']} frames classified of {stats['frames_seen']} read; "
                       f"results in {db or out_dir / 'results.sqlite'}")
            return
        options = RunOptions(inputs=list(inputs), out_dir=out_dir, top_k=top_k, workers=workers, heatmaps=heatmaps,
                             explain_class=explain_class, traits=traits, checkpoint_every=checkpoint_every,
                             resume=resume, overwrite=overwrite, progress=not no_progress)
        summary = run_files(predictor, options, log=lambda m: click.echo(m, err=True))
        if parquet:
            from .results import ImageRecord, write_parquet

            records = [ImageRecord.from_dict(json.loads(line)) for line in open(summary.outputs["jsonl"])]
            summary.outputs["parquet"] = str(write_parquet(out_dir / "results.parquet", records))
        _report(summary)

    run_cli(body, verbose=verbose)


def _report(summary) -> None:  # noqa: ANN001 - RunSummary, imported lazily
    click.echo(f"{summary.ok} classified, {summary.failed} failed, {summary.skipped_non_images} non-image "
               f"file(s) skipped in {summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s)")
    for kind, path in summary.outputs.items():
        click.echo(f"  {kind}: {path}")
