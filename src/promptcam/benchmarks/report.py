"""Benchmark reports: JSON, a markdown table, and a latency-vs-batch plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# said in every report until a TensorRT run is committed: no TensorRT figure of this project is on record
TENSORRT_NOTE = ("TensorRT: the TensorRT engine path (trt-fp16) has not been executed on record in this project "
                 "(no GPU machine it has had carries TensorRT); it is tested only as far as a CPU can test it, and "
                 "this report makes no TensorRT performance claim unless a trt-fp16 row appears in the table above.")


def markdown(result: dict[str, Any]) -> str:
    on_gpu = any("gpu_mib" in row for row in result["rows"])
    lines = [f"# promptcam-bench: {result['model']}", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, GPU: "
             f"{result['machine']['gpu'] or 'none'}; torch {result['machine']['torch']}, onnxruntime "
             f"{result['machine']['onnxruntime']}; {result['threads']} threads. All rows measured side by side in "
             "one run.", "",
             "| backend | batch | p50 ms | p90 ms | p99 ms | img/s | peak RSS MiB" + (" | GPU MiB" if on_gpu else "")
             + " | vs eager-official | vs plain-vit | max abs diff | top-1 agree | attention corr mean | worst map |",
             "| --- |" + " ---: |" * (13 if on_gpu else 12)]
    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        return "–" if value is None else format(value, spec)

    for row in result["rows"]:
        lines.append(f"| {row['backend']} | {row['batch']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['images_per_second']:.1f} | {row['peak_rss_mib']:.0f} | "
                     + (f"{fmt(row, 'gpu_mib', '.0f')} | " if on_gpu else "") +
                     f"{fmt(row, 'speedup_vs_eager_official', '.2f')}× | {fmt(row, 'cost_vs_plain_vit', '.2f')}× | "
                     f"{fmt(row, 'max_abs_diff', '.1e')} | {fmt(row, 'top1_agreement', '.0%')} | "
                     f"{fmt(row, 'attention_mean_correlation', '.4f')} | "
                     f"{fmt(row, 'attention_min_correlation', '.4f')} |")
    if on_gpu:
        lines += ["", "GPU MiB: for PyTorch rows the caching allocator's peak during the measurement; for ONNX Runtime "
                  "and TensorRT rows the device memory the backend took (its build and every batch so far). "
                  "GPU rows' \"vs plain-vit\" is against plain-vit-cuda."]
    scaled = result.get("real_scale")
    if scaled:
        shown = next((r.get("quality_images") for r in scaled["rows"]), None)
        lines += ["", f"## Real-scale weights: {scaled['model']}", "",
                  "Quality depends on the weights: random initialisation flatters int8. Every row: agreement with "
                  "eager float32 on the same weights"
                  + (f", over {shown} synthetic images that neither the int8 search nor the timing used" if shown
                     else "")
                  + "; speed vs eager-official of the table above (same architecture and batch).", "",
                  "| backend | batch | p50 ms | img/s | vs eager-official | max abs diff | top-1 agree "
                  "| attention corr mean | worst map |", "| --- |" + " ---: |" * 8]
        for row in scaled["rows"]:
            lines.append(f"| {row['backend']} | {row['batch']} | {row['p50_ms']:.1f} | "
                         f"{row['images_per_second']:.1f} | "
                         f"{fmt(row, 'speedup_vs_eager_official', '.2f')}× | {fmt(row, 'max_abs_diff', '.1e')} | "
                         f"{fmt(row, 'top1_agreement', '.0%')} | {fmt(row, 'attention_mean_correlation', '.4f')} | "
                         f"{fmt(row, 'attention_min_correlation', '.4f')} |")
        lines += [f"- {name}: {text}" for name, text in scaled["backends"].items()]
        lines += [f"- skipped {name}: {reason}" for name, reason in scaled["skipped"].items()]
    if result.get("backends"):
        lines += ["", "Backends:"] + [f"- {name}: {text}" for name, text in result["backends"].items()]
    if result["skipped"]:
        lines += ["", "Skipped:"] + [f"- {name}: {reason}" for name, reason in result["skipped"].items()]
    compiled = [row for row in result["rows"] if "compile_s" in row]
    if compiled:
        lines += ["", "torch.compile time (first call at each batch size minus a steady call; not in the timings):"]
        lines += [f"- {row['backend']} batch {row['batch']}: {row['compile_s']:.1f} s" for row in compiled]
    if result.get("profile"):
        profile = result["profile"]
        lines += ["", "ORT profile: " + (f"skipped: {profile['skipped']}" if "skipped" in profile else
                                         f"{profile['backend']} at batch {profile['batch']}, see {profile['summary']}")]
    lines += ["", result.get("tensorrt_note", TENSORRT_NOTE)]
    real = result.get("real_size")
    if real:
        lines += ["", f"## Real-size: {real['frames']} camera-trap frames as {real['size']} JPEGs "
                  f"(quality {real['jpeg_quality']}, {real['mean_file_mb']} MB each) against the same frames "
                  "pre-shrunk", "",
                  f"promptcam-run, {real.get('backend', '')} ({real['engine']}), batch {real['batch']}, "
                  f"{real['workers']} decoding threads, "
                  f"JPEG decoder {real.get('jpeg_decoder', 'opencv')}; fastest of the alternated runs.", "",
                  "| folder | img/s | vs pre-shrunk | CPU ms per image |", "| --- | ---: | ---: | ---: |",
                  f"| pre-shrunk | {real['small_img_per_s']:.1f} | 1.00 | "
                  f"{fmt(real, 'small_cpu_ms_per_image', '.0f')} |",
                  f"| 12 MP, decoded at the size needed | {real['large_img_per_s']:.1f} | {real['ratio']:.2f} | "
                  f"{fmt(real, 'large_cpu_ms_per_image', '.0f')} |",
                  f"| 12 MP, full decode | {real['large_full_decode_img_per_s']:.1f} | "
                  f"{real['ratio_full_decode']:.2f} | {fmt(real, 'large_full_decode_cpu_ms_per_image', '.0f')} |",
                  "", "CPU ms per image: the process's CPU time over all threads (least of the runs), steadier than "
                  "img/s when other work shares the machine."]
    video = result.get("video")
    if video:
        lines += ["", f"## Video: {video['clips']} clips of {video['clip_seconds']:g} s, {video['size']} at "
                  f"{video['clip_fps']:g} fps, sampled at {video['sample_fps']:g} fps, against the same frames as "
                  "JPEGs", "", f"{video.get('backend', '')} ({video['engine']}), batch {video['batch']}; fastest of "
                  "the alternated runs.", "", "| input | frames classified / s | vs JPEGs |", "| --- | ---: | ---: |",
                  f"| JPEG photos | {video['jpeg_frames_per_s']:.1f} | 1.00 |",
                  f"| clips | {video['clip_frames_per_s']:.1f} | {video['clip_over_jpeg']:.2f} |", "",
                  f"Clip decode alone: {video['decode_ms_per_frame']} ms per classified frame (every frame of the "
                  "clip is decoded; it runs in its own thread, beside inference)."]
    for key, title in (("end_to_end", "End to end (promptcam-run on a folder)"), ("traits", "Trait ranking")):
        if result.get(key):
            lines += ["", f"{title}:"] + [f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}"
                                          for k, v in result[key].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["backend"] == backend]
        ax.plot([r["batch"] for r in rows], [r["p50_ms"] / r["batch"] for r in rows], marker="o", label=backend)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per image (ms)")
    ax.set_title(result["model"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    paths["markdown"].write_text(markdown(result))
    plot(result, paths["plot"])
    return paths
