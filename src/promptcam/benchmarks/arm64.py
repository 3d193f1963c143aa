"""The station runtime on aarch64, checked against x86: the Python half of ``benchmarks/arm64.sh``.

Three steps (docs/arm64.md):

* ``prepare`` (x86, needs torch): the demo model (cached), its fp32 export and an int8 export that
  passed its gates here, the held-out demo images as model-size pixels, and a small station inbox
  and detector file;
* ``outputs`` (run once on each side; torch-free, so it runs inside the emulated arm64 Debian with
  only the station install): logits and every class's attention of both graphs on the same pixels,
  whether this side decodes the images to the same pixels, and what the runtime says when it loads
  the int8 model here;
* ``report`` (x86): the comparisons, the station results side by side, the footprint, a speed
  estimate on paper from the graph's MACs, a JSON report and one summary line.

Emulated timings are never reported as speed: qemu runs ARM code tens of times slower than a Pi.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from .macs import every_int8_candidate, graph_macs, speed_estimate

HELDOUT = "images/heldout"
MODELS = ("fp32", "int8")
SIDES = ("x86_64", "aarch64")
INBOX_IMAGES = 8
STATION_DOCS = ("watch_rows", "watch_megadetector", "run_detections")
FRAMES = 4

# The fp32 checks of issue 30: logits within 1e-4 of scale, maps correlated >= 0.999, same top-1 everywhere
FP32_LOGIT_FACTOR = 1e-4
FP32_MAP_CORRELATION = 0.999
# Station results (the int8 model): every field but the floats must be identical (files, failures, classes
# and their order, trait heads, boxes); ARM's and x86's int8 kernels round differently, so a probability may
# differ in its 4th decimal (measured: 1.85e-4 at most, docs/arm64.md); floats must agree within this
STATION_FLOAT_TOLERANCE = 1e-3
# Fields that name the machine or the moment, not the result (left out of the station comparison)
MACHINE_FIELDS = frozenset({"engine", "engine_description", "hostname", "host", "machine", "platform", "created",
                            "started", "finished", "completed", "processed_at", "classified_at", "time", "seconds",
                            "elapsed", "elapsed_s", "images_per_second", "wall_s", "date", "timestamp", "versions",
                            "classification_completion_time",
                            "python", "onnxruntime", "numpy", "opencv", "pid", "mtime", "ctime", "inode",
                            "taken_at_source", "moved_at", "run_id"})


# --- prepare (x86) ---------------------------------------------------------------------------------


def prepare(demo_cache: Path, work: Path, ckpt: Path | None = None, log=print) -> dict[str, Any]:  # noqa: ANN001
    """The demo model, its fp32 and int8 exports, held-out pixels and the station inputs, under ``work``.

    With ``ckpt``, that checkpoint of the demo's architecture (another seed, or prompts trained for
    fewer epochs) is exported instead of the demo's trained model; the world still comes from
    ``demo_cache``.
    """
    from promptcam.core.manifest import read_manifest
    from promptcam.runtime.predictor import Predictor

    if ckpt is None:
        from promptcam.train.demo import build_demo_model

        try:
            from filelock import FileLock
            lock = FileLock(str(demo_cache) + ".lock")
        except ImportError:  # the dev extra brings filelock; without it one user of the cache at a time
            lock = contextlib.nullcontext()
        with lock:
            built = build_demo_model(demo_cache, log=log)
        built["source"] = f"the demo model (promptcam demo's recipe), cache {demo_cache}"
    else:
        built = {"world": demo_cache / "world", "ckpt": ckpt, "model": export_fp32(ckpt, work / "ckpt-fp32", log),
                 "source": f"checkpoint {ckpt}"}
    models = work / "models"
    fp32 = models / "fp32"
    source = read_manifest(built["model"]).source.get("sha256")
    stamp = work / ".demo-model"
    if not stamp.is_file() or stamp.read_text() != source:  # another demo model: everything from it is stale
        for stale in (fp32, models / "int8", work / HELDOUT, work / "calib", work / "station", work / SIDES[0],
                      work / SIDES[1]):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(built["model"], fp32)
        shutil.copytree(built["world"] / "val", work / HELDOUT)
        stamp.write_text(str(source))
    heldout = work / HELDOUT
    vitb_graph(models / "vitb16-c200", log)
    int8 = models / "int8"
    if not (int8 / "manifest.json").is_file():
        export_int8(built["ckpt"], built["world"], int8, work / "calib", log)
    images = sorted(p for p in heldout.rglob("*.png"))
    with Predictor(fp32, "ort-cpu") as predictor:
        pixels = np.stack([predictor.prepare(p)[0] for p in images])
    np.save(work / "heldout_pixels.npy", pixels)
    labels = [int(p.parent.name.split(".")[0]) for p in images]
    (work / "heldout.json").write_text(json.dumps({"images": [str(p.relative_to(work)) for p in images],
                                                   "labels": labels}))
    station_inputs(work, images)
    (work / "model_source.json").write_text(json.dumps({"source": built["source"], "sha256": source}))
    log(f"prepared {len(images)} held-out images, models {fp32} and {int8}")
    return {"images": len(images), "fp32": str(fp32), "int8": str(int8)}


def export_fp32(ckpt: Path, out: Path, log=print) -> Path:  # noqa: ANN001
    """``ckpt`` exported fp32 into ``out`` (kept while the checkpoint's sha256 is the same)."""
    import hashlib

    from promptcam.core.manifest import read_manifest
    from promptcam.export.passes import ExportOptions, export_model

    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    if not (out / "manifest.json").is_file() or read_manifest(out).source.get("sha256") != digest:
        shutil.rmtree(out, ignore_errors=True)
        export_model(ExportOptions(ckpt=ckpt, out=out), log=log)
    return out


def export_int8(ckpt: Path, world: Path, out: Path, calib: Path, log=print) -> None:  # noqa: ANN001
    """Static int8 with the gates, calibrated on four training images of each class."""
    from promptcam.export.passes import ExportOptions, export_model

    shutil.rmtree(calib, ignore_errors=True)
    calib.mkdir(parents=True)
    for folder in sorted((world / "train").iterdir()):
        for path in sorted(folder.glob("*.png"))[:4]:
            shutil.copy(path, calib / f"{folder.name.split('.')[0]}_{path.name}")
    export_model(ExportOptions(ckpt=ckpt, out=out, precision="int8", calib=calib), log=log)


def vitb_graph(out: Path, log=print) -> Path:  # noqa: ANN001
    """The fp32 graph of a ViT-B/16 Prompt-CAM with C = 200 (random weights at real scale), for its MACs only."""
    if (out / "manifest.json").is_file():
        return out
    from promptcam.benchmarks.checkpoints import real_scale_model
    from promptcam.export.passes import ExportOptions, export_model
    from promptcam.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(real_scale_model("dino_vitb16", 200), out.parent / "vitb16-c200.pt")
    export_model(ExportOptions(ckpt=ckpt, out=out, validate=False), log=log)
    ckpt.unlink()
    return out


def station_inputs(work: Path, images: list[Path]) -> None:
    """A small inbox (JPEGs the size of a camera's thumbnail, and one broken file) and frames with a detector file."""
    import cv2

    rng = np.random.default_rng(30)
    by_class: dict[str, list[Path]] = {}
    for path in images:
        by_class.setdefault(path.parent.name, []).append(path)
    firsts = [paths[0] for _, paths in sorted(by_class.items())]
    inbox = work / "station" / "inbox"
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir(parents=True)
    for i, path in enumerate(firsts[::2][:INBOX_IMAGES]):
        bgr = cv2.resize(cv2.imread(str(path)), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(inbox / f"cam1_{i:03d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    (inbox / "cam1_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2000, np.uint8).tobytes())
    frames = work / "station" / "frames"
    shutil.rmtree(frames, ignore_errors=True)
    frames.mkdir(parents=True)
    entries = []
    for i in range(FRAMES):
        height, width = 480, 640
        frame = cv2.resize(rng.integers(60, 140, (12, 16, 3), np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        detections = []
        for j, (x, y) in enumerate(((60 + 40 * i, 80), (380, 200 + 20 * i))):
            tile = cv2.resize(cv2.imread(str(firsts[(2 * i + j * 5) % len(firsts)])), (192, 192),
                              interpolation=cv2.INTER_NEAREST)
            frame[y:y + 192, x:x + 192] = tile
            detections.append({"category": "1", "conf": round(0.95 - 0.1 * j, 3),
                               "bbox": [x / width, y / height, 192 / width, 192 / height]})
        detections.append({"category": "2", "conf": 0.5, "bbox": [0.0, 0.0, 0.1, 0.1]})  # a person: not classified
        name = f"frame_{i:03d}.jpg"
        cv2.imwrite(str(frames / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        entries.append({"file": name, "detections": detections})
    (work / "station" / "detections.json").write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "synthetic boxes (benchmarks/arm64.sh)"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": entries}, indent=1))


# --- outputs (each side) ---------------------------------------------------------------------------


def side_outputs(work: Path, threads: int | None = None) -> dict[str, Any]:
    """Both graphs' raw outputs on the prepared pixels, decode parity and the int8 load message, on this machine."""
    from promptcam.core.architecture import machine_architecture
    from promptcam.export.target import model_outputs
    from promptcam.runtime.predictor import Predictor

    side = machine_architecture()
    out = work / side
    out.mkdir(parents=True, exist_ok=True)
    pixels = np.load(work / "heldout_pixels.npy")
    names = json.loads((work / "heldout.json").read_text())["images"]
    facts: dict[str, Any] = {"architecture": side, "machine": platform.machine(), "python": sys.version.split()[0],
                             "versions": _versions()}
    for precision in MODELS:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            predictor = Predictor(work / "models" / precision, "ort-cpu", batch_size=32, threads=threads)
        with predictor:
            logits, attention = model_outputs(predictor, pixels)
            if precision == "fp32":  # the runtime's own image path on this machine, against x86's pixels
                decoded = np.stack([predictor.prepare(work / name)[0] for name in names])
                diff = np.abs(decoded.astype(np.int16) - pixels.astype(np.int16)).reshape(len(pixels), -1).max(1)
                facts["decode"] = {"images": len(names), "identical": int((diff == 0).sum()),
                                   "max_abs_diff": int(diff.max())}
        np.savez_compressed(out / f"outputs_{precision}.npz", logits=logits, attention=attention)
        facts[f"{precision}_load_message"] = stderr.getvalue().strip()
    (out / "side.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found = {}
    for name in ("promptcam", "onnxruntime", "onnxruntime-gpu", "numpy", "opencv-python-headless", "simplejpeg"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


# --- report (x86) ----------------------------------------------------------------------------------


def _load(work: Path, side: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(work / side / f"outputs_{precision}.npz")
    return data["logits"], data["attention"]


def fp32_parity(work: Path) -> dict[str, Any]:
    """aarch64 fp32 against x86 fp32 on the same pixels."""
    from promptcam.export.gates import map_correlation

    x_logits, x_attention = _load(work, "x86_64", "fp32")
    a_logits, a_attention = _load(work, "aarch64", "fp32")
    scale = max(1.0, float(np.abs(x_logits).max()))
    scaled = float(np.abs(a_logits.astype(np.float64) - x_logits).max() / scale)
    patches = x_attention.shape[-1]
    corr = map_correlation(a_attention.reshape(-1, patches), x_attention.reshape(-1, patches))
    same = int((a_logits.argmax(-1) == x_logits.argmax(-1)).sum())
    result = {"images": len(x_logits), "top1_same": same, "logits_max_abs_diff": float(
        np.abs(a_logits.astype(np.float64) - x_logits).max()), "logits_scale": scale, "logits_scaled_diff": scaled,
        "maps": int(corr.size), "maps_min_correlation": float(corr.min()), "maps_mean_correlation": float(corr.mean()),
        "attention_max_abs_diff": float(np.abs(a_attention.astype(np.float64) - x_attention).max()),
        "thresholds": {"logits_scaled_diff": FP32_LOGIT_FACTOR, "maps_min_correlation": FP32_MAP_CORRELATION}}
    result["passed"] = (same == len(x_logits) and scaled <= FP32_LOGIT_FACTOR
                        and result["maps_min_correlation"] >= FP32_MAP_CORRELATION)
    return result


def int8_gates(work: Path) -> dict[str, Any]:
    """The int8 graph's gates against fp32 on each side, with the gates the export recorded."""
    from promptcam.core.manifest import read_manifest
    from promptcam.export.gates import Int8Gates, gate_numbers

    recorded = read_manifest(work / "models" / "int8").validation.get("int8_gates") or {}
    gates = Int8Gates(**recorded.get("gates", {}))
    result: dict[str, Any] = {"gates": gates.as_dict(), "export": {k: recorded.get(k) for k in (
        "measured", "reference", "passed", "validated_on")}}
    for side in SIDES:
        numbers = gate_numbers(*_load(work, side, "int8"), *_load(work, side, "fp32"))
        result[side] = {**numbers, "failed": gates.failures(numbers), "passed": not gates.failures(numbers)}
    x_top = _load(work, "x86_64", "int8")[0].argmax(-1)
    a_top = _load(work, "aarch64", "int8")[0].argmax(-1)
    result["top1_same_as_x86_int8"] = int((x_top == a_top).sum())
    result["passed"] = result["aarch64"]["passed"]
    return result


def normalize(value: Any, roots: list[str]) -> Any:  # noqa: ANN401 - JSON of any shape
    """A result document without the fields that name the machine, with paths relative to the side's root."""
    if isinstance(value, dict):
        return {k: normalize(v, roots) for k, v in sorted(value.items()) if k not in MACHINE_FIELDS}
    if isinstance(value, list):
        return [normalize(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<work>")
        return value
    return value


def differences(a: Any, b: Any, where: str = "") -> tuple[list[str], float, int]:  # noqa: ANN401
    """Where two normalised documents differ (floats within STATION_FLOAT_TOLERANCE agree), the largest float
    difference and how many floats were not exactly equal."""
    if isinstance(a, bool) or isinstance(b, bool) or not (isinstance(a, int | float) and isinstance(b, int | float)):
        if type(a) is not type(b):
            return [f"{where}: {type(a).__name__} against {type(b).__name__}"], 0.0, 0
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b))} on one side only"], 0.0, 0
        found, worst, count = [], 0.0, 0
        for key in a:
            f, w, c = differences(a[key], b[key], f"{where}.{key}")
            found, worst, count = found + f, max(worst, w), count + c
        return found, worst, count
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} against {len(b)} items"], 0.0, 0
        found, worst, count = [], 0.0, 0
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            f, w, c = differences(x, y, f"{where}[{i}]")
            found, worst, count = found + f, max(worst, w), count + c
        return found, worst, count
    if isinstance(a, float) or isinstance(b, float):
        gap = abs(float(a) - float(b))
        return ([f"{where}: {a} against {b}"] if gap > STATION_FLOAT_TOLERANCE else []), gap, 1 if gap else 0
    return ([f"{where}: {a!r} against {b!r}"] if a != b else []), 0.0, 0


def station_parity(work: Path, roots: dict[str, str]) -> dict[str, Any]:
    """The station's outputs (watch --once rows, its MegaDetector export, run --detections) side by side."""
    result: dict[str, Any] = {"float_tolerance": STATION_FLOAT_TOLERANCE, "ignored_fields": sorted(MACHINE_FIELDS)}
    every_root = [r for r in roots.values() if r]
    for name, reader in zip(STATION_DOCS, (_jsonl, _json, _json), strict=True):
        docs = {}
        for side in SIDES:
            path = work / side / "station" / f"{name}.json{'l' if reader is _jsonl else ''}"
            docs[side] = normalize(reader(path), sorted(every_root, key=len, reverse=True)) if path.is_file() else None
        if docs["x86_64"] is None or docs["aarch64"] is None:
            result[name] = {"matches": False, "max_float_diff": math.nan, "problems": ["missing on " + ", ".join(
                s for s in SIDES if docs[s] is None)]}
            continue
        found, worst, floats = differences(docs["x86_64"], docs["aarch64"])
        result[name] = {"matches": not found, "problems": found[:20], "floats_not_bit_equal": floats,
                        "max_float_diff": worst, **_counts(name, docs["aarch64"])}
    result["passed"] = all(result[n]["matches"] for n in STATION_DOCS)
    return result


def _counts(name: str, doc: Any) -> dict[str, int]:  # noqa: ANN401
    if name == "watch_rows":
        return {"rows": len(doc), "failed_rows": sum(1 for r in doc if r.get("failure"))}
    images = doc.get("images", []) if isinstance(doc, dict) else []
    detections = [d for i in images for d in (i.get("detections") or [])]
    return {"images": len(images), "classified_detections": sum(1 for d in detections if d.get("classifications"))}


def _json(path: Path) -> Any:  # noqa: ANN401
    return json.loads(path.read_text())


def _jsonl(path: Path) -> list[Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: str(r.get("file") or r.get("path") or r.get("name") or ""))


# --- the report and its summary line ----------------------------------------------------------------

SUMMARY_RE = re.compile(r"^arm64 (?P<verdict>PASSED|FAILED)((?: [a-z0-9_]+=[^ ]+)+)$")


def summary_line(report: dict[str, Any]) -> str:
    """One line, ``arm64 PASSED key=value ...``, that ``parse_summary_line`` reads back."""
    fp32, int8, station = report["fp32"], report["int8"], report["station"]
    arm = int8["aarch64"]
    pi = report["speed_estimate"]["devices"]["raspberry_pi_5"]
    vitb_pi = report["vitb16_c200"]["speed_estimate"]["devices"]["raspberry_pi_5"]
    fields = {
        "fp32_top1_same": f"{fp32['top1_same']}/{fp32['images']}",
        "fp32_logits_scaled_diff": f"{fp32['logits_scaled_diff']:.2e}",
        "fp32_maps_min_corr": f"{fp32['maps_min_correlation']:.6f}",
        "int8_top1": f"{arm['top1_agreement']:.4f}",
        "int8_attn_mean": f"{arm['attention_mean_correlation']:.5f}",
        "int8_attn_min": f"{arm['attention_min_correlation']:.4f}",
        "station_match": "yes" if station["passed"] else "no",
        "station_max_float_diff": f"{max(station[n]['max_float_diff'] for n in STATION_DOCS):.2e}",
        "torch_free": "yes" if report["imports"]["passed"] else "no",
        "footprint_mb": f"{report['footprint']['venv_mb']:.1f}",
        "pi5_int8_est_img_s": f"{pi['int8_images_per_second']:.0f}",
        "pi5_vitb_int8_est_img_s": f"{vitb_pi['int8_images_per_second']:.2f}",
        "report": report["report_path"],
    }
    verdict = "PASSED" if report["passed"] else "FAILED"
    return f"arm64 {verdict} " + " ".join(f"{k}={v}" for k, v in fields.items())


def parse_summary_line(line: str) -> dict[str, str]:
    """The fields of a summary line (``verdict`` and each key); ValueError when it is not one."""
    match = SUMMARY_RE.match(line.strip())
    if not match:
        raise ValueError(f"not an arm64 summary line: {line!r}")
    fields = dict(item.split("=", 1) for item in match.group(2).split())
    return {"verdict": match.group("verdict"), **fields}


def build_report(work: Path, facts: dict[str, Any], out: Path) -> dict[str, Any]:
    """Every comparison in one document; ``facts`` come from the shell script (footprint, imports, roots ...)."""
    from promptcam.core.manifest import read_manifest

    sides = {side: json.loads((work / side / "side.json").read_text()) for side in SIDES}
    fp32_macs = graph_macs(work / "models" / "fp32")
    chosen = json.loads((work / "models" / "int8" / "int8_report.json").read_text()).get("int8_matmuls", [])
    int8_macs = graph_macs(work / "models" / "fp32", chosen)
    vitb = work / "models" / "vitb16-c200"
    vitb_fp32, vitb_int8 = graph_macs(vitb), graph_macs(vitb, every_int8_candidate(vitb))
    validate = facts.get("validate_int8") or {}
    int8 = int8_gates(work)
    int8["validate_int8_on_aarch64"] = validate
    int8["load_message_before"] = sides["aarch64"].get("int8_load_message", "")
    int8["load_message_after"] = facts.get("int8_load_message_after_validation", "")
    int8["warned_before_validation"] = "quality gates ran on" in int8["load_message_before"]
    int8["warning_gone_after_validation"] = "quality gates ran on" not in int8["load_message_after"]
    int8["x86_load_message"] = sides["x86_64"].get("int8_load_message", "")
    report: dict[str, Any] = {
        "what": "promptcam's station runtime on aarch64 (Debian bookworm arm64 under qemu-user) against x86_64",
        "sides": sides, "emulation": facts.get("emulation", {}),
        "model": {**json.loads((work / "model_source.json").read_text()), "note": facts.get("model_note", ""),
                  "config": read_manifest(work / "models" / "fp32").config.to_dict(),
                  "int8_plan": _int8_plan(work / "models" / "int8")},
        "fp32": fp32_parity(work), "int8": int8,
        "station": station_parity(work, facts.get("roots", {})),
        "imports": facts.get("imports", {}), "footprint": facts.get("footprint", {}),
        "macs_per_image": {"fp32_graph": fp32_macs, "int8_graph": int8_macs},
        "speed_estimate": speed_estimate(fp32_macs, int8_macs),
        "vitb16_c200": {"what": "ViT-B/16 Prompt-CAM, 224 px, C = 200 (random weights at real scale): the graph "
                                "a CUB-like station runs; int8 share: every MatMul the quantiser may take "
                                "(blocks 0..L-2 and the last block's image key/value), as the demo's plan did",
                        "macs_per_image": {"fp32_graph": vitb_fp32, "int8_graph": vitb_int8},
                        "speed_estimate": speed_estimate(vitb_fp32, vitb_int8)},
        "timings": "none: emulated timings are not speed",
        "report_path": str(out / "arm64.json"),
    }
    report["imports"]["passed"] = bool(report["imports"].get("runtime_pulls") == [])
    int8_ok = (int8["passed"] and validate.get("passed") is True and int8["warned_before_validation"]
               and int8["warning_gone_after_validation"])
    report["passed"] = bool(report["fp32"]["passed"] and int8_ok and report["station"]["passed"]
                            and report["imports"]["passed"] and sides["aarch64"]["architecture"] == "aarch64")
    line = summary_line(report)
    report["summary_line"] = line
    out.mkdir(parents=True, exist_ok=True)
    (out / "arm64.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "summary.txt").write_text(line + "\n")
    return report


def _int8_plan(model_dir: Path) -> str | None:
    path = model_dir / "int8_report.json"
    return json.loads(path.read_text()).get("plan") if path.is_file() else None


@click.group()
def main() -> None:
    """The Python steps of benchmarks/arm64.sh."""


@main.command("prepare")
@click.option("--demo-cache", type=click.Path(path_type=Path), required=True)
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="A checkpoint of the demo's architecture instead of the demo's trained model.")
def prepare_command(demo_cache: Path, work: Path, ckpt: Path | None) -> None:
    """x86: the demo model, its exports, held-out pixels and the station inputs."""
    prepare(demo_cache, work, ckpt)


@main.command("outputs")
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--threads", type=int, default=None)
def outputs_command(work: Path, threads: int | None) -> None:
    """Each side: raw outputs of both graphs, decode parity, the int8 load message."""
    facts = side_outputs(work, threads)
    click.echo(json.dumps({k: v for k, v in facts.items() if k != "versions"}))


@main.command("report")
@click.option("--work", type=click.Path(path_type=Path), required=True)
@click.option("--facts", type=click.Path(path_type=Path), required=True, help="JSON written by the shell script.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def report_command(work: Path, facts: Path, out: Path) -> None:
    """x86: compare, estimate, write OUT/arm64.json and OUT/summary.txt; print the summary line last."""
    report = build_report(work, json.loads(facts.read_text()), out)
    click.echo(report["summary_line"])
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
