"""``promptcam-convert``: official Prompt-CAM checkpoint -> project ``model.pt``."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import run_cli, verbose_option


@click.command()
@click.argument("official", type=click.Path(path_type=Path))
@click.option("--classes", type=click.Path(path_type=Path), help="Text file, one class name per line.")
@click.option("--num-heads", type=int, default=None, help="Heads of the backbone (default D/64).")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output model.pt.")
@verbose_option
def convert(official: Path, classes: Path | None, num_heads: int | None, out: Path, verbose: bool) -> None:
    """Convert an official Prompt-CAM checkpoint (OFFICIAL) into the project's model.pt."""

    def body() -> None:
        from .checkpoint import load_model, read_class_names, save_checkpoint

        names = read_class_names(classes) if classes else None
        model = load_model(official, class_names=names, num_heads=num_heads)
        save_checkpoint(model, out)
        cfg = model.config
        click.echo(f"wrote {out}: {cfg.arch}, {cfg.num_classes} classes, {cfg.depth} blocks, "
                   f"{cfg.num_heads} heads, {cfg.img_size}px/patch {cfg.patch_size}")

    run_cli(body, verbose=verbose)
