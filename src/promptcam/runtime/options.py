"""Command-line options shared by the runtime's commands (``run``, ``watch``), declared once."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import option_group

from .backends import ENGINES
from .clips import ClipOptions
from .prediction import DEFAULT_TOP_K

model_options = option_group(
    "Model and engine",
    click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
                 help="Model directory written by promptcam-export."),
    click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                 help="auto: TensorRT plan > ORT CUDA > CPU, and says which it picked."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="ONNX Runtime intra-op threads (default: all cores)."),
    click.option("--server", default=None, metavar="URL",
                 help="Classify on a promptcam serve server (http://HOST:8000 or grpc://HOST:8001); images are "
                      "decoded here, --model is the local copy of the served folder."),
    click.option("--server-wait", type=click.FloatRange(min=0), default=60.0, show_default=True,
                 help="Seconds a lost server is retried, with backoff, before the batch waits for later."),
)

explain_options = option_group(
    "Classes and explanations",
    click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_TOP_K, show_default=True),
    click.option("--traits", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Rank trait heads and keep K (0: off)."),
    click.option("--heatmaps", type=click.Path(path_type=Path), default=None, help="Write heatmap overlays here."),
)

# the detection selection of ``promptcam-run --detections`` and ``promptcam-watch --detections``
det_threshold_option = click.option("--det-threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
                                    help="Classify detections at or above this confidence.")
det_categories_option = click.option("--det-categories", default="animal", show_default=True,
                                     help="Detection categories to classify, comma-separated names or ids.")


def category_list(text: str) -> tuple[str, ...]:
    """``--det-categories`` as a tuple of names or ids (``"animal, 2"`` -> ``("animal", "2")``)."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def given(ctx: click.Context, *names: str) -> list[str]:
    """The options among ``names`` that the user set on the command line (not left at their default)."""
    return [f"--{name.replace('_', '-')}" for name in names
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)]


def clip_options_of(values: dict) -> ClipOptions:
    """``ClipOptions`` from the command line's values (``video_options``)."""
    return ClipOptions(fps=values["video_fps"], max_frames=values["video_max_frames"],
                       per_frame=values.get("per_frame", False))


video_options = option_group(
    "Videos (.mp4 .avi .mov .mkv in the inputs)",
    click.option("--video-fps", type=click.FloatRange(min=0.01, max=100), default=ClipOptions.fps, show_default=True,
                 help="Frames sampled per second of video time."),
    click.option("--video-max-frames", type=click.IntRange(min=1, max=100_000), default=ClipOptions.max_frames,
                 show_default=True, help="Sampled frames per clip at most (an hour-long clip stops there)."),
)

events_options = option_group(
    "Events (bursts of one camera)",
    click.option("--events", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Group each camera's photos and clips into events: a file taken within SECONDS of the "
                      "previous one joins its event (e.g. 60). Off by default."),
    click.option("--camera-from", default=None,
                 help="A regular expression searched in each file's name; its first group names the camera "
                      "(default: the file's folder). E.g. '^(site\\d+/cam\\d+)/'."),
)
