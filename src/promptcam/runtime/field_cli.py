"""Field-station commands: ``promptcam-watch`` and ``promptcam-export-results``."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import run_cli

from .backends import ENGINES


@click.command()
@click.argument("inbox", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="Exported model directory.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="SQLite results (default INBOX/../results.sqlite).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--traits", type=int, default=0, show_default=True, help="Rank trait heads and keep K.")
@click.option("--settle", type=float, default=2.0, show_default=True,
              help="Seconds a file's size must stay unchanged before it is taken.")
@click.option("--poll", type=float, default=1.0, show_default=True, help="Scan interval (seconds).")
@click.option("--heatmaps", type=click.Path(path_type=Path), default=None)
@click.option("--move-processed", type=click.Path(path_type=Path), default=None,
              help="Move classified images here, into one folder per day.")
@click.option("--failed", "failed_dir", type=click.Path(path_type=Path), default=None,
              help="Move unreadable images here.")
@click.option("--jsonl", type=click.Path(path_type=Path), default=None, help="Also append every row to this JSONL log.")
@click.option("--status-file", type=click.Path(path_type=Path), default=None,
              help="Health JSON (queue depth, images/s, last error), updated periodically.")
@click.option("--no-events", is_flag=True, help="Polling only (no inotify/watchdog).")
@click.option("--once", is_flag=True, help="Process what is there, then exit.")
@click.option("--batch-delay", type=float, default=0.0, hidden=True, help="Test hook: pause before each commit.")
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
def watch(inbox: Path, model_dir: Path, engine: str, db: Path | None, batch_size: int, threads: int | None, top_k: int,
          traits: int, settle: float, poll: float, heatmaps: Path | None, move_processed: Path | None,
          failed_dir: Path | None, jsonl: Path | None, status_file: Path | None, no_events: bool, once: bool,
          batch_delay: float, verbose: bool) -> None:
    """Classify images as they arrive in INBOX; results go to SQLite. Restart-safe."""

    def body() -> None:
        from .inbox import InboxWatcher, WatchOptions
        from .predictor import Predictor

        predictor = Predictor(model_dir, engine, batch_size=batch_size, threads=threads)
        click.echo(f"engine {predictor.engine_description}", err=True)
        options = WatchOptions(
            inbox=inbox, db=db or inbox.resolve().parent / "results.sqlite", top_k=top_k, traits=traits, settle=settle,
            poll=poll, heatmaps=heatmaps, move_processed=move_processed, failed_dir=failed_dir, jsonl=jsonl,
            status_file=status_file, use_events=not no_events, once=once, batch_delay=batch_delay)
        watcher = InboxWatcher(predictor, options, log=lambda m: click.echo(m, err=True))
        watcher.run()
        click.echo(f"stopped: {watcher.processed} classified, {watcher.failed} failed this session", err=True)

    run_cli(body, verbose=verbose)


@click.command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["megadetector", "csv"]), default="megadetector", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Model directory, for the class list of the MegaDetector file (default: classes seen in the rows).")
@click.option("--verbose", is_flag=True, help="Show tracebacks.")
def export_results(db: Path, fmt: str, out: Path, model_dir: Path | None, verbose: bool) -> None:
    """Write the standard result files from a field-station SQLite database."""

    def body() -> None:
        from promptcam.core.errors import PromptCamError
        from promptcam.core.manifest import read_manifest

        from .results import ImageRecord, megadetector_json, write_csv, write_json
        from .store import ResultStore

        if not db.is_file():
            raise PromptCamError(f"{db}: results database not found")
        store = ResultStore(db)
        rows = list(store.rows())
        store.close()
        records = [ImageRecord(file=r["file"], path=r["stored_path"] or r["file"], failure=r["failure"],
                               width=r["width"], height=r["height"], top_k=r["top_k"] or [], heatmap=r["heatmap"],
                               trait_heads=r["trait_heads"], explained_class=r["explained_class"]) for r in rows]
        if fmt == "csv":
            write_csv(out, records)
        else:
            if model_dir is not None:
                config = read_manifest(model_dir).config
            else:
                from promptcam.core.config import ModelConfig

                names: dict[int, str] = {}
                for record in records:
                    names.update({c["index"]: c["name"] for c in record.top_k})
                count = max(names, default=0) + 1
                config = ModelConfig(arch="unknown", img_size=1, patch_size=1, embed_dim=1, depth=1, num_heads=1,
                                     num_classes=count,
                                     class_names=[names.get(i, f"class_{i:03d}") for i in range(count)])
            write_json(out, megadetector_json(records, config, {"database": str(db)}))
        click.echo(f"wrote {len(records)} images to {out}")

    run_cli(body, verbose=verbose)
