"""Field-station commands: ``promptcam-watch`` and ``promptcam-export-results``."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import grouped_command, option_group, run_cli, verbose_option
from promptcam.runtime.options import (
    category_list,
    det_categories_option,
    det_threshold_option,
    explain_options,
    model_options,
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
    click.option("--no-events", is_flag=True, help="Polling only (no inotify/watchdog)."),
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
@verbose_option
def watch(inbox: Path, model_dir: Path, engine: str, db: Path | None, batch_size: int, threads: int | None, top_k: int,
          traits: int, settle: float, incomplete_wait: float, poll: float, heatmaps: Path | None,
          move_processed: Path | None, failed_dir: Path | None, jsonl: Path | None, status_file: Path | None,
          no_events: bool, workers: int, once: bool, batch_delay: float, detections_mode: str | None,
          det_threshold: float, det_categories: str, sidecar_wait: float, verbose: bool) -> None:
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
            incomplete_wait=incomplete_wait, detections=sidecars, workers=workers)
        options.check()  # before the model loads: a wrong setting is one line, at once
        predictor = Predictor(model_dir, engine, batch_size=batch_size, threads=threads)
        click.echo(f"engine {predictor.engine_description}", err=True)
        watcher = InboxWatcher(predictor, options, log=lambda m: click.echo(m, err=True))
        watcher.run()
        click.echo(f"stopped: {watcher.processed} classified, {watcher.failed} failed this session", err=True)

    run_cli(body, verbose=verbose)


@click.command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["megadetector", "csv", "jsonl", "parquet"]),
              default="megadetector", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model directory, for the class list of the MegaDetector file (default: classes seen in the rows).")
@verbose_option
def export_results(db: Path, fmt: str, out: Path, model_dir: Path | None, verbose: bool) -> None:
    """Write the standard result files from a field-station SQLite database."""

    def body() -> None:
        from promptcam.core.errors import PromptCamError
        from promptcam.core.manifest import read_manifest
        from promptcam.results.formats import class_names_seen, write_output
        from promptcam.results.store import ResultStore

        if not db.is_file():
            raise PromptCamError(f"{db}: results database not found")
        import sqlite3

        try:
            store = ResultStore(db)
            try:
                records = list(store.records())
                # written by promptcam-watch --detections: the detector's categories, the model's classes
                det_categories, stored_names = store.meta_json("detection_categories"), store.meta_json("class_names")
            finally:
                store.close()
        except sqlite3.DatabaseError as exc:  # not a database, or damaged: one clear line, not a traceback
            raise PromptCamError(f"{db}: cannot read the results database ({exc})") from exc
        if model_dir is not None:
            config = read_manifest(model_dir).config
            class_names, classifier = config.class_names, f"promptcam {config.arch}"
        elif stored_names:
            class_names, classifier = stored_names, "promptcam"
        else:
            class_names, classifier = class_names_seen(records), "promptcam"
        detector = None
        if any(r.detections is not None for r in records):  # per-detection output, as promptcam-run --detections
            detector = {"detection_categories": det_categories or {}, "info": {}, "unmatched_entries": []}
        write_output(fmt, out, records, class_names, {"database": str(db)}, classifier=classifier, detector=detector)
        click.echo(f"wrote {len(records)} images to {out}")

    run_cli(body, verbose=verbose)
