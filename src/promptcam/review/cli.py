"""``promptcam-review``: review results with their heatmaps in a local web page, and correct labels.

``promptcam-review RESULTS`` (the same as ``promptcam-review serve RESULTS``) indexes the results
and serves the page; ``promptcam-review export RESULTS --out DIR`` writes the verdicts.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from promptcam.core.cli import run_cli, verbose_option

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class DefaultServeGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, is RESULTS for ``serve``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultServeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Review results with heatmaps in a local web page; correct labels.

    \b
    promptcam-review RESULTS [--model DIR] [--host 127.0.0.1] [--port 8787]
    promptcam-review export RESULTS --out DIR
    """


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Exported model directory: compute any class's heatmap on demand.")
@click.option("--engine", default="auto", show_default=True, help="Engine for --model (auto, ort-cpu, ...).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep it local).")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@click.option("--reindex", is_flag=True, help="Index the results again even if they look unchanged.")
@verbose_option
def serve(results: Path, model_dir: Path | None, engine: str, host: str, port: int, reindex: bool,
          verbose: bool) -> None:
    """Serve the review page for RESULTS (a promptcam-run folder or a promptcam-watch database)."""

    def body() -> None:
        import uvicorn

        from .app import create_app
        from .index import build_index, locate
        from .media import Explainer

        source = locate(results)
        explainer = Explainer(model_dir, engine) if model_dir is not None else None
        build_index(source, class_names=explainer.class_names if explainer else None, force=reindex,
                    log=lambda m: click.echo(m, err=True))
        local = is_loopback(host)
        if not local:
            click.echo(f"warning: serving on {host}: anyone who can reach this address can see the photos "
                       "and change the reviews", err=True)
        app = create_app(source, explainer=explainer, allowed_hosts=LOOPBACK_HOSTS if local else None)
        click.echo(f"review page: http://{'localhost' if local else host}:{port}/  (Ctrl-C stops)", err=True)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning" if not verbose else "info")
        finally:
            if explainer is not None:
                explainer.close()

    run_cli(body, verbose=verbose)


@main.command("export")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for corrections.csv and images/<class>/ (for promptcam-train --data OUT/images).")
@verbose_option
def export_command(results: Path, out_dir: Path, verbose: bool) -> None:
    """Write the reviews of RESULTS as a CSV and an ImageFolder tree."""

    def body() -> None:
        from promptcam.core.errors import PromptCamError

        from .export import export_reviews
        from .index import locate
        from .query import ReviewStore

        source = locate(results)
        if not source.review_db.is_file():
            raise PromptCamError(f"{source.path}: nothing reviewed yet (no {source.review_db.name})")
        store = ReviewStore(source.review_db)
        try:
            summary = export_reviews(store, out_dir, log=lambda m: click.echo(m, err=True))
        finally:
            store.close()
        click.echo(f"{summary.reviewed} reviewed ({summary.corrected} corrected): {summary.csv}; "
                   f"{summary.linked} linked and {summary.copied} copied into {summary.tree}"
                   + (f"; {len(summary.missing)} missing on disk" if summary.missing else ""))

    run_cli(body, verbose=verbose)
