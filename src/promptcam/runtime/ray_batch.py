"""``promptcam-run --ray``: the same run, spread over a Ray cluster (optional ``ray`` extra).

Ray Data reads the file list as chunks of ``batch_size`` files in input order (the same chunks a
local run makes, so every inference batch, and hence every number, is identical), decodes them
in parallel tasks, and an actor pool of Predictors (ORT or TensorRT; ``num_gpus`` per actor on GPU
clusters) classifies them. Per-image failures stay records. The results merge into the same
MegaDetector JSON / CSV / JSONL (/ Parquet) files as a local run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import BackendUnavailableError
from promptcam.core.manifest import read_manifest

from .pipeline import (
    CSV_NAME,
    JOURNAL_NAME,
    MEGADETECTOR_NAME,
    LoadedImage,
    RunOptions,
    RunSummary,
    chunk_files,
    classify_chunk,
    collect_inputs,
    load_item,
)
from .results import ImageRecord, megadetector_json, write_csv, write_json, write_parquet


@dataclass
class RayOptions:
    address: str | None = None  # None: start a local instance; "auto": join a running cluster
    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    threads_per_actor: int = 1
    engine: str = "auto"
    parquet: bool = True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(f"Ray is not installed ({exc}); pip install 'promptcam[ray]'") from exc
    return ray


def _decode_chunk(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Ray task: decode one chunk's files; pixels travel as bytes (rows may hold fewer after failures)."""
    cfg = ModelConfig.from_dict(config)
    loaded = [load_item(name, Path(path), cfg, False) for name, path in zip(row["names"], row["paths"], strict=True)]
    good = [item for item in loaded if item.failure is None]
    empty = np.zeros((0, cfg.img_size, cfg.img_size, 3), np.uint8)
    pixels = np.stack([item.pixels for item in good]) if good else empty
    return {"chunk": row["chunk"], "names": row["names"], "paths": row["paths"],
            "failures": json.dumps([item.failure for item in loaded]),
            "sizes": json.dumps([list(item.size) if item.size else None for item in loaded]),
            "pixels": pixels.tobytes()}


class _PredictorActor:
    """Ray actor: one Predictor per actor, constructed once."""

    def __init__(self, model_dir: str, engine: str, threads: int, options: dict[str, Any]) -> None:
        from .predictor import Predictor

        self.predictor = Predictor(model_dir, engine, batch_size=1024, threads=threads)
        self.options = RunOptions(inputs=[], out_dir=Path("."), **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        size = self.predictor.config.img_size
        out = []
        for i in range(len(batch["chunk"])):
            failures, sizes = json.loads(batch["failures"][i]), json.loads(batch["sizes"][i])
            pixels = np.frombuffer(batch["pixels"][i], np.uint8).reshape(-1, size, size, 3)
            good = iter(pixels)
            loaded = [LoadedImage(name, Path(path), failure=failure) if failure is not None else
                      LoadedImage(name, Path(path), next(good), tuple(sz))
                      for name, path, failure, sz in zip(batch["names"][i], batch["paths"][i], failures, sizes,
                                                         strict=True)]
            records = classify_chunk(self.predictor, loaded, self.options)
            out.append(json.dumps([asdict(r) for r in records]))
        return {"records": out}


def run_ray(model_dir: Path, options: RunOptions, ray_options: RayOptions, batch_size: int,
            log=print) -> RunSummary:  # noqa: ANN001
    """Classify every input on Ray; write the same result files as ``run_files``."""
    ray = _import_ray()
    started = time.perf_counter()
    manifest = read_manifest(model_dir)
    files, skipped = collect_inputs(options.inputs)
    chunks = list(chunk_files(files, batch_size, set()))
    items = [{"chunk": i, "names": [n for n, _ in c], "paths": [str(p) for _, p in c]} for i, c in enumerate(chunks)]
    if not ray.is_initialized():
        ray.init(address=ray_options.address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    run_options = {"top_k": options.top_k, "traits": options.traits, "explain_class": options.explain_class}
    dataset = (ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * ray_options.actors)))
               .map(_decode_chunk, fn_kwargs={"config": manifest.config.to_dict()})
               .map_batches(_PredictorActor, batch_size=1, concurrency=ray_options.actors,
                            num_gpus=ray_options.gpus_per_actor, num_cpus=ray_options.cpus_per_actor,
                            fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()),
                                                   "engine": ray_options.engine,
                                                   "threads": ray_options.threads_per_actor,
                                                   "options": run_options}))
    records = [ImageRecord(**r) for row in dataset.iter_rows() for r in json.loads(row["records"])]
    order = {str(p): i for i, (_, p) in enumerate(files)}
    records.sort(key=lambda r: order[r.path])
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with open(out / JOURNAL_NAME, "w", encoding="utf-8") as fh:
        fh.writelines(r.to_json() + "\n" for r in records)
    info = {"engine": f"ray x{ray_options.actors} {ray_options.engine}", "model_dir": str(model_dir),
            "precision": manifest.precision, "top_k": options.top_k, "traits": options.traits}
    write_json(out / MEGADETECTOR_NAME, megadetector_json(records, manifest.config, info))
    write_csv(out / CSV_NAME, records)
    outputs = {"megadetector": str(out / MEGADETECTOR_NAME), "csv": str(out / CSV_NAME),
               "jsonl": str(out / JOURNAL_NAME)}
    if ray_options.parquet:
        outputs["parquet"] = str(write_parquet(out / "results.parquet", records))
    ok = sum(r.ok for r in records)
    summary = RunSummary(total=len(files), ok=ok, failed=len(records) - ok, skipped_non_images=len(skipped),
                         seconds=time.perf_counter() - started, outputs=outputs)
    log(f"ray: {len(chunks)} chunks over {ray_options.actors} actor(s)")
    return summary
