"""Where ONNX Runtime spends its time: one profiled run, summarised by op type."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.atomic import atomic_write_text
from promptcam.core.iospec import PIXELS


def summarise_profile(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Kernel time per op type from ORT's profile JSON (``SessionOptions.enable_profiling``).

    Counts the ``Node`` events named ``*_kernel_time`` (one per node and run: the op's time on
    its provider, as ORT measures it; on CUDA the launch and wait as the host sees them).

    Args:
        events: The profile file's list of trace events.

    Returns:
        ``{"total_ms", "runs", "ops": [{"op_type", "calls", "total_ms", "share", "providers"}]}``,
        ops sorted by total time, largest first; ``runs``: the number of ``model_run`` events.
    """
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    providers: dict[str, set[str]] = defaultdict(set)
    runs = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs += 1
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        op = str(args.get("op_name", "?"))
        totals[op] += float(event.get("dur", 0)) / 1000.0  # microseconds -> ms
        calls[op] += 1
        if args.get("provider"):
            providers[op].add(str(args["provider"]))
    total = sum(totals.values())
    ops = [{"op_type": op, "calls": calls[op], "total_ms": ms, "share": ms / total if total else 0.0,
            "providers": sorted(providers[op])}
           for op, ms in sorted(totals.items(), key=lambda item: -item[1])]
    return {"total_ms": total, "runs": runs, "ops": ops}


def profile_markdown(summary: dict[str, Any], title: str) -> str:
    """The summary as a markdown table."""
    lines = [f"# {title}", "", f"{summary['runs']} profiled runs; kernel time {summary['total_ms']:.1f} ms in all "
             f"({summary['total_ms'] / max(1, summary['runs']):.2f} ms per run).", "",
             "| op type | calls | total ms | share | providers |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {op['op_type']} | {op['calls']} | {op['total_ms']:.2f} | {op['share']:.1%} | "
              f"{', '.join(op['providers'])} |" for op in summary["ops"]]
    return "\n".join(lines) + "\n"


def profile_model(model_path: Path, engine: str, batch: int, out: Path, *, runs: int = 5, threads: int | None = None,
                  outputs: tuple[str, ...] = ("logits", "top_class", "top_attention")) -> dict[str, Path]:
    """Profile ``runs`` inferences of ``model_path`` at ``batch`` and write ``ort_profile_b{batch}.json``
    and ``.md`` to ``out``. ORT profiles from session start, so one extra first run (allocations,
    kernel selection) is made and left out of the summary.

    Returns:
        Paths of the summary files (and the raw ORT trace, kept beside them).
    """
    import onnxruntime as ort

    from promptcam.runtime.backends.onnxruntime import PROVIDERS, cuda_provider, default_threads, preload_cuda_libraries

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.enable_profiling = True
    out.mkdir(parents=True, exist_ok=True)
    options.profile_file_prefix = str(out / f"ort_trace_b{batch}")
    providers: list[Any] = ["CPUExecutionProvider"]
    if engine == "ort-cuda":
        preload_cuda_libraries()
        providers.insert(0, cuda_provider())
    elif engine != "ort-cpu":
        raise ValueError(f"profiling supports ort-cpu and ort-cuda, not {engine!r}")
    session = ort.InferenceSession(str(model_path), options, providers=providers)
    if session.get_providers()[0] != PROVIDERS[engine]:
        raise RuntimeError(f"{engine}: {PROVIDERS[engine]} failed to initialise (active: {session.get_providers()})")
    size = session.get_inputs()[0].shape[1]
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for _ in range(runs + 1):
        session.run(list(outputs), {PIXELS: pixels})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    # drop the first run (allocations, kernel selection): events after the first model_run ends
    first_end = next((e["ts"] + e["dur"] for e in events if e.get("name") == "model_run"), 0)
    summary = summarise_profile(e for e in events if e.get("ts", 0) >= first_end)
    summary |= {"engine": engine, "providers": session.get_providers(), "batch": batch, "outputs": list(outputs),
                "model": str(model_path), "onnxruntime": ort.__version__, "trace": trace.name}
    paths = {"json": out / f"ort_profile_b{batch}.json", "markdown": out / f"ort_profile_b{batch}.md", "trace": trace}
    atomic_write_text(paths["json"], json.dumps(summary, indent=1))
    atomic_write_text(paths["markdown"], profile_markdown(
        summary, f"ONNX Runtime profile: {engine}, batch {batch}, outputs {', '.join(outputs)}"))
    return paths
