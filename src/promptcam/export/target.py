"""``promptcam validate-int8``: an int8 model's quality gates, re-run with this machine's kernels.

The export measures its int8 gates with the exporting machine's ONNX Runtime kernels; a station on
another architecture (a Raspberry Pi, a Jetson) runs other ones (docs/arm64.md). This command runs
the int8 graph and the float32 export of the same checkpoint side by side on this machine, on
images the user names, applies the gates recorded in the int8 manifest, and, when they pass, adds
this architecture to ``validation["int8_gates"]["validated_on"]``: the runtime stops warning here.

Torch-free (numpy, OpenCV and ONNX Runtime), so it runs on the station itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from promptcam.core.architecture import architecture_record, machine_architecture, validated_architectures
from promptcam.core.cli import run_cli, verbose_option
from promptcam.core.errors import ImageError, ManifestError, ValidationError
from promptcam.core.iospec import ATTENTION, LOGITS
from promptcam.core.manifest import manifest_differences, read_manifest
from promptcam.runtime.images import iter_image_files
from promptcam.runtime.predictor import Predictor

from .gates import Int8Gates, gate_numbers


def _check_pair(int8_dir: Path, reference_dir: Path) -> None:
    int8, reference = read_manifest(int8_dir), read_manifest(reference_dir)
    if int8.precision != "int8":
        raise ManifestError(f"{int8_dir}: precision is {int8.precision!r}, not int8")
    if reference.precision != "fp32":
        raise ManifestError(f"{reference_dir}: the reference must be an fp32 export, not {reference.precision!r}")
    differences = [d for d in manifest_differences(int8, reference, str(reference_dir))
                   if not d.startswith("precision")]
    ours, theirs = int8.source.get("sha256"), reference.source.get("sha256")
    if ours and theirs and ours != theirs:
        differences.append(f"source checkpoint sha256: {ours[:12]}... against {theirs[:12]}...")
    if differences:
        raise ManifestError(f"{reference_dir} is not the fp32 export of the same model as {int8_dir}: "
                            + "; ".join(differences))


def model_outputs(predictor: Predictor, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and every class's attention ``[N, C, heads, patches]`` of model-size ``pixels``."""
    logits, attention = [], []
    for start in range(0, len(pixels), predictor.batch_size):
        out = predictor.backend.infer(pixels[start:start + predictor.batch_size], (LOGITS, ATTENTION))
        logits.append(out[LOGITS])
        attention.append(out[ATTENTION])
    return np.concatenate(logits), np.concatenate(attention)


def load_pixels(predictor: Predictor, images: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Model-size pixels of the readable ``images`` (the runtime's own image path), and the unreadable ones."""
    pixels, failed = [], []
    for path in images:
        try:
            pixels.append(predictor.prepare(path)[0])
        except ImageError as exc:
            failed.append(f"{path}: {exc}")
    if not pixels:
        raise ValidationError("no readable image to validate on" + (f" ({failed[0]})" if failed else ""))
    return np.stack(pixels), failed


def validate_on_target(int8_dir: Path, reference_dir: Path, images: list[Path], *, threads: int | None = None,
                       batch_size: int = 8, record: bool = True) -> dict[str, Any]:
    """Run the int8 gates of ``int8_dir`` on this machine against ``reference_dir`` (fp32, same checkpoint).

    Args:
        int8_dir: An int8 export.
        reference_dir: The fp32 export of the same checkpoint.
        images: Representative images (the export's ``--calib`` folder, say).
        threads: ONNX Runtime threads.
        batch_size: Images per call.
        record: Add this architecture to the int8 manifest's ``validated_on`` when the gates pass.

    Returns:
        ``architecture``, ``numbers`` (``gates.gate_numbers``), ``gates``, ``failed`` (missed gates),
        ``passed``, ``recorded`` and ``unreadable`` (images that could not be read).
    """
    _check_pair(int8_dir, reference_dir)
    with Predictor(reference_dir, "ort-cpu", batch_size=batch_size, threads=threads) as reference, \
            Predictor(int8_dir, "ort-cpu", batch_size=batch_size, threads=threads) as int8:
        pixels, unreadable = load_pixels(reference, images)
        want_logits, want_attention = model_outputs(reference, pixels)
        logits, attention = model_outputs(int8, pixels)
        manifest = int8.manifest
    numbers = gate_numbers(logits, attention, want_logits, want_attention)
    recorded_gates = (manifest.validation.get("int8_gates") or {}).get("gates") or {}
    gates = Int8Gates(**{k: float(v) for k, v in recorded_gates.items() if k in ("top1", "attention_mean",
                                                                                  "attention_min")})
    failed = gates.failures(numbers)
    result = {"architecture": machine_architecture(), "numbers": numbers, "gates": gates.as_dict(),
              "failed": failed, "passed": not failed, "recorded": False, "unreadable": unreadable}
    if record and not failed:
        section = manifest.validation.setdefault("int8_gates", {})
        entries = [e for e in section.get("validated_on") or [] if isinstance(e, dict)
                   and e.get("architecture") != result["architecture"]]
        how = f"promptcam validate-int8 against the fp32 export {reference_dir.name}/ on {len(pixels)} images"
        section["validated_on"] = [*entries, architecture_record(numbers, how=how)]
        manifest.write(int8_dir)
        result["recorded"] = True
    return result


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--reference", "reference_dir", type=click.Path(path_type=Path), required=True,
              help="The fp32 export of the same checkpoint (promptcam export --precision fp32).")
@click.option("--images", "image_dirs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Representative images (a folder or file; repeatable): the export's --calib folder, say.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many images (in sorted order).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads (default: all cores).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Images per call.")
@click.option("--no-record", is_flag=True, help="Measure only; leave the manifest as it is.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the result here.")
@verbose_option
def main(model_dir: Path, reference_dir: Path, image_dirs: tuple[Path, ...], limit: int | None, threads: int | None,
         batch_size: int, no_record: bool, json_out: Path | None, verbose: bool) -> None:
    """Re-run an int8 model's quality gates with this machine's kernels; record the architecture when they pass."""

    def body() -> None:
        images = sorted(iter_image_files(image_dirs))[:limit]
        result = validate_on_target(model_dir, reference_dir, images, threads=threads, batch_size=batch_size,
                                    record=not no_record)
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=1) + "\n")
        n = result["numbers"]
        line = (f"{result['architecture']}: top1={n['top1_agreement']:.4f} attention mean/worst="
                f"{n['attention_mean_correlation']:.5f}/{n['attention_min_correlation']:.5f} on {n['images']} images")
        for problem in result["unreadable"]:
            click.echo(f"unreadable, left out: {problem}", err=True)
        if not result["passed"]:
            raise ValidationError(f"int8 gates missed on {line}:\n  " + "\n  ".join(result["failed"]))
        state = "recorded in the manifest" if result["recorded"] else "not recorded (--no-record)"
        listed = ", ".join(validated_architectures(read_manifest(model_dir).validation))
        click.echo(f"PASSED | int8 gates on {line}; {state} (validated on: {listed or 'none'})")

    run_cli(body, verbose=verbose)
