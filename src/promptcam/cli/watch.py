"""Field-station commands: ``promptcam-watch`` and ``promptcam-export-results``."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import grouped_command, option_group, run_cli, verbose_option
from promptcam.runtime.options import (
    category_list,
    clip_options_of,
    det_categories_option,
    det_threshold_option,
    events_options,
    explain_options,
    model_options,
    video_options,
)
from promptcam.station.options import SidecarOptions, WatchOptions


@grouped_command()
@click.argument("inbox", type=click.Path(path_type=Path))
@model_options
@explain_options
@option_group(
    "Inbox",
    click.option("--db", type=click.Path(path_type=Path), default=None,
                 help="SQLite results (default INBOX/../results.sqlite)."),
    click.option("--settle", type=click.FloatRange(min=0), default=WatchOptions.settle, show_default=True,
                 help="Seconds a file's size and mtime must stay unchanged before it is taken."),
    click.option("--incomplete-wait", type=click.FloatRange(min=0), default=WatchOptions.incomplete_wait,
                 show_default=True,
                 help="Seconds a file that looks half-written (no JPEG/PNG end marker, empty, does not decode) "
                      "is waited for before it is taken as it is."),
    click.option("--poll", type=click.FloatRange(min=0.01), default=WatchOptions.poll, show_default=True,
                 help="Scan interval (seconds)."),
    click.option("--move-processed", type=click.Path(path_type=Path), default=None,
                 help="Move classified images here, into one folder per day."),
    click.option("--failed", "failed_dir", type=click.Path(path_type=Path), default=None,
                 help="Move unreadable images here."),
    click.option("--jsonl", type=click.Path(path_type=Path), default=None,
                 help="Also append every row to this JSONL log."),
    click.option("--status-file", type=click.Path(path_type=Path), default=None,
                 help="Health JSON (queue depth, images/s, last error), updated periodically."),
    click.option("--workers", type=click.IntRange(min=1), default=WatchOptions.workers, show_default=True,
                 help="Threads reading, hashing and decoding each batch's files."),
    click.option("--no-events", is_flag=True,
                 help="Polling only (no inotify/watchdog file-system events; bursts are --events SECONDS)."),
    click.option("--once", is_flag=True, help="Process what is there, then exit."),
    click.option("--batch-delay", type=float, default=0.0, hidden=True, help="Test hook: pause before each commit."),
)
@option_group(
    "Detections (a MegaDetector JSON beside each photo)",
    click.option("--detections", "detections_mode", default=None, metavar="sidecar",
                 help="sidecar: classify the crops of the detections in IMG.JPG.json (or IMG.json) beside each "
                      "photo, a MegaDetector batch file of that one image or {\"detections\": [...]}."),
    det_threshold_option,
    det_categories_option,
    click.option("--sidecar-wait", type=click.FloatRange(min=0), default=SidecarOptions.wait, show_default=True,
                 help="Seconds a ready photo waits for its sidecar before it is recorded as failed."),
)
@video_options
@events_options
@verbose_option
def watch(inbox: Path, model_dir: Path, engine: str, server: str | None, server_wait: float, db: Path | None,
          batch_size: int, threads: int | None, top_k: int,
          traits: int, settle: float, incomplete_wait: float, poll: float, heatmaps: Path | None,
          move_processed: Path | None, failed_dir: Path | None, jsonl: Path | None, status_file: Path | None,
          no_events: bool, workers: int, once: bool, batch_delay: float, detections_mode: str | None,
          det_threshold: float, det_categories: str, sidecar_wait: float, video_fps: float, video_max_frames: int,
          events: float | None, camera_from: str | None, verbose: bool) -> None:
    """Classify images as they arrive in INBOX; results go to SQLite. Restart-safe.

    Output folders inside INBOX are left out of the scan; an output folder that is INBOX is refused.
    """

    def body() -> None:
        from promptcam.core.errors import PromptCamError
        from promptcam.runtime.predictor import Predictor
        from promptcam.station.inbox import InboxWatcher
        from promptcam.station.sidecar import DETECTION_MODES

        if detections_mode is not None and detections_mode not in DETECTION_MODES:
            raise PromptCamError(f"--detections {detections_mode!r} is not a mode of promptcam-watch (known: "
                                 f"{', '.join(DETECTION_MODES)}: a per-image JSON beside each photo); a detector "
                                 "file is read by promptcam-run --detections FILE")
        sidecars = None if detections_mode is None else SidecarOptions(
            threshold=det_threshold, categories=category_list(det_categories), wait=sidecar_wait)
        options = WatchOptions(
            inbox=inbox, db=db or inbox.resolve().parent / "results.sqlite", top_k=top_k, traits=traits, settle=settle,
            poll=poll, heatmaps=heatmaps, move_processed=move_processed, failed_dir=failed_dir, jsonl=jsonl,
            status_file=status_file, use_events=not no_events, once=once, batch_delay=batch_delay,
            incomplete_wait=incomplete_wait, detections=sidecars, workers=workers,
            clips=clip_options_of({"video_fps": video_fps, "video_max_frames": video_max_frames}), events=events,
            camera_from=camera_from)
        options.check()  # before the model loads: a wrong setting is one line, at once
        predictor = Predictor(model_dir, engine, batch_size=batch_size, threads=threads, server=server,
                              server_wait=server_wait)
        click.echo(f"engine {predictor.engine_description}", err=True)
        watcher = InboxWatcher(predictor, options, log=lambda m: click.echo(m, err=True))
        watcher.run()
        click.echo(f"stopped: {watcher.processed} classified, {watcher.failed} failed this session", err=True)

    run_cli(body, verbose=verbose)


@grouped_command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["megadetector", "csv", "jsonl", "parquet", "camtrap-dp"]),
              default="megadetector", show_default=True,
              help="camtrap-dp: a Camtrap DP 1.0 data package (OUT is a folder; see docs/camtrap-dp.md).")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="The result file (the package folder with --format camtrap-dp).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model directory, for the class list (default: as recorded, else the classes seen in the rows) "
                   "and, when the source does not record it, the model's sha256 (camtrap-dp classifiedBy).")
@option_group(
    "Camtrap DP (--format camtrap-dp)",
    click.option("--taxa", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 help="CSV class,scientificName[,taxonID,taxonRank,vernacularName]: the taxon of each class."),
    click.option("--deployments", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 help="CSV of Camtrap DP deployments fields (latitude, longitude, ...) keyed by folder (a camera "
                      "folder of the photos) or deploymentID."),
    click.option("--camera-depth", type=click.IntRange(min=1), default=None,
                 help="A photo's camera is the first N folders of its name (default: all its folders)."),
    click.option("--unknown-below", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="A top class probability below this is observationType unknown (no scientificName)."),
    click.option("--media-prefix", default="", help="Put before each media filePath (a folder or a URL)."),
    click.option("--public-media", is_flag=True, help="filePublic true (default false: not public)."),
)
@verbose_option
def export_results(db: Path, fmt: str, out: Path, model_dir: Path | None, taxa: Path | None,
                   deployments: Path | None, camera_depth: int | None, unknown_below: float, media_prefix: str,
                   public_media: bool, verbose: bool) -> None:
    """Write the standard result files from a field-station SQLite database or a promptcam run folder."""

    def body() -> None:
        from promptcam.core.atomic import file_sha256
        from promptcam.core.errors import PromptCamError
        from promptcam.core.manifest import read_manifest
        from promptcam.results.export_source import load_source
        from promptcam.results.formats import class_names_seen, write_output

        camtrap_only = {"--taxa": taxa, "--deployments": deployments, "--camera-depth": camera_depth,
                        "--unknown-below": unknown_below or None, "--media-prefix": media_prefix or None,
                        "--public-media": public_media or None}
        given = [flag for flag, value in camtrap_only.items() if value is not None]
        if fmt != "camtrap-dp" and given:
            raise PromptCamError(f"{', '.join(given)}: only for --format camtrap-dp")
        source = load_source(db)
        records, model_sha = source.records, source.model_sha256
        if model_dir is not None:
            manifest = read_manifest(model_dir)
            class_names, classifier = manifest.config.class_names, f"promptcam {manifest.config.arch}"
            model_sha = model_sha or file_sha256(manifest.file(model_dir, "model"))
        else:
            class_names, classifier = source.class_names or class_names_seen(records), source.classifier
        if fmt == "camtrap-dp":
            _camtrap_dp(source, class_names, model_sha)
            return
        detector = None
        if any(r.detections is not None for r in records):  # per-detection output, as promptcam-run --detections
            detector = {"detection_categories": source.detection_categories or {}, "info": {}, "unmatched_entries": []}
        write_output(fmt, out, records, class_names, source.info, classifier=classifier, detector=detector)
        click.echo(f"wrote {len(records)} images to {out}")

    def _camtrap_dp(source, class_names: list[str], model_sha: str | None) -> None:
        from promptcam.results.camtrapdp import CamtrapOptions, Provenance, write_camtrap_dp
        from promptcam.results.camtrapdp_tables import VERSION, read_deployments, read_taxa
        from promptcam.results.export_source import fill_capture_times
        from promptcam.results.megadetector import DEFAULT_THRESHOLD, MEGADETECTOR_CATEGORIES

        if source.kind == "run":
            fill_capture_times(source.records)  # EXIF DateTimeOriginal, as the station reads it
        provenance = Provenance(
            class_names=class_names, model_sha256=model_sha,
            detection_categories=source.detection_categories or dict(MEGADETECTOR_CATEGORIES),
            classified_at=source.completed_at, detector=source.detector,
            det_threshold=DEFAULT_THRESHOLD if source.det_threshold is None else source.det_threshold,
            source=f"{'the run folder' if source.kind == 'run' else 'the station database'} {db.name}")
        options = CamtrapOptions(taxa=read_taxa(taxa) if taxa else {},
                                 deployments=read_deployments(deployments) if deployments else {},
                                 camera_depth=camera_depth, unknown_below=unknown_below, media_prefix=media_prefix,
                                 public_media=public_media)
        summary = write_camtrap_dp(out, source.records, provenance, options)
        if model_sha is None:
            summary.notes.append(f"{db}: the model's sha256 is not recorded; classifiedBy says 'sha256 unknown' "
                                 "(pass --model MODEL_DIR, the model that classified, to name it)")
        for note in summary.notes:
            click.echo(f"note: {note}", err=True)
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.observations.items()))
        click.echo(f"wrote a Camtrap DP {VERSION} package to {out}: {summary.deployments} deployment(s), "
                   f"{summary.media} media, {sum(summary.observations.values())} observation(s) ({kinds})")

    run_cli(body, verbose=verbose)
