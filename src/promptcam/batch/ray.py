"""``promptcam-run --ray``: the same run, spread over a Ray cluster (optional ``ray`` extra).

Ray Data reads the file list as chunks of ``batch_size`` files in input order (the same chunks a
local run makes, so every inference batch, and hence every number, is identical), decodes them
in parallel tasks, and an actor pool of Predictors (ORT or TensorRT; ``num_gpus`` per actor on GPU
clusters) classifies them. Per-image failures stay records. The results merge into the same
MegaDetector JSON / CSV / JSONL (/ Parquet) files as a local run.

With ``--detections``, each chunk's row carries the part of the detection plan its files need
(``DetectionPlan.for_chunk``, pickled); the decode task cuts the crops, the actors classify them in
batches of the run's batch size, as a local run does.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import BackendUnavailableError, PromptCamError
from promptcam.core.manifest import read_manifest
from promptcam.results.formats import write_outputs
from promptcam.runtime.records import ImageRecord

from .chunks import LoadedImage, classify_chunk, load_item
from .detection_run import build_plan
from .inputs import InputFile, collect_inputs
from .options import RunOptions, RunSummary
from .run import JOURNAL_NAME, chunk_files, inputs_info, log_refused_links
from .run_state import check_identity, out_dir_lock, run_identity


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


def _items(row: dict[str, Any]) -> list[InputFile]:
    return [InputFile(name, Path(path), key, size, mtime) for name, path, key, size, mtime in json.loads(row["files"])]


def _decode_chunk(row: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Ray task: decode one chunk's files; pixels travel as bytes (rows may hold fewer after failures)."""
    cfg = ModelConfig.from_dict(config)
    if row.get("plan"):  # --detections: the crops and their squares travel pickled with the plan
        plan = pickle.loads(row["plan"])  # noqa: S301 - written by this run's driver
        loaded = [plan.load_item(item, cfg, False) for item in _items(row)]
        return {"chunk": row["chunk"], "files": row["files"], "plan": row["plan"], "loaded": pickle.dumps(loaded)}
    loaded = [load_item(item, cfg, False) for item in _items(row)]
    good = [item for item in loaded if item.failure is None]
    empty = np.zeros((0, cfg.img_size, cfg.img_size, 3), np.uint8)
    pixels = np.stack([item.pixels for item in good]) if good else empty
    return {"chunk": row["chunk"], "files": row["files"],
            "failures": json.dumps([item.failure for item in loaded]),
            "sizes": json.dumps([list(item.size) if item.size else None for item in loaded]),
            "decoded": pixels.tobytes()}


class _PredictorActor:
    """Ray actor: one Predictor per actor, constructed once."""

    def __init__(self, model_dir: str, engine: str, threads: int, options: dict[str, Any], batch_size: int) -> None:
        from promptcam.runtime.predictor import Predictor

        # the run's batch size: a chunk of whole frames is one batch, crops are batched as a local run does
        self.predictor = Predictor(model_dir, engine, batch_size=batch_size, threads=threads)
        self.options = RunOptions(inputs=[], out_dir=Path("."), **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        size = self.predictor.config.img_size
        out = []
        for i in range(len(batch["chunk"])):
            if "plan" in batch:
                plan = pickle.loads(batch["plan"][i])  # noqa: S301 - written by this run's driver
                loaded = pickle.loads(batch["loaded"][i])  # noqa: S301
                records = plan.records(self.predictor, loaded, plan.predict(self.predictor, loaded, self.options),
                                       self.options)
                out.append(json.dumps([r.to_dict() for r in records]))
                continue
            failures, sizes = json.loads(batch["failures"][i]), json.loads(batch["sizes"][i])
            pixels = np.frombuffer(batch["decoded"][i], np.uint8).reshape(-1, size, size, 3)
            good = iter(pixels)
            loaded = [LoadedImage(item, failure=failure) if failure is not None else
                      LoadedImage(item, next(good), tuple(sz))
                      for item, failure, sz in zip(_items({"files": batch["files"][i]}), failures, sizes,
                                                   strict=True)]
            records = classify_chunk(self.predictor, loaded, self.options)
            out.append(json.dumps([r.to_dict() for r in records]))
        return {"records": out}


def run_ray(model_dir: Path, options: RunOptions, ray_options: RayOptions, batch_size: int,
            log=print) -> RunSummary:  # noqa: ANN001
    """Classify every input on Ray; write the same result files as ``run_files``.

    Raises:
        PromptCamError: ``--out`` holds an earlier run (without ``--overwrite``) or another run is writing there.
    """
    ray = _import_ray()
    started = time.perf_counter()
    manifest = read_manifest(model_dir)
    collected = collect_inputs(options.inputs, follow_links=options.follow_links)
    files, skipped = collected.files, collected.skipped
    log_refused_links(collected.refused_links, log)
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with out_dir_lock(out):
        if (out / JOURNAL_NAME).exists() and not options.overwrite:
            raise PromptCamError(f"{out / JOURNAL_NAME} exists: pass --overwrite to start over (--ray does not "
                                 "resume)")
        identity = run_identity(manifest, model_dir, inputs=options.inputs, top_k=options.top_k,
                                explain_class=options.explain_class, traits=options.traits, heatmaps=None,
                                follow_links=options.follow_links)
        plan = None
        if options.detections is not None:
            if options.traits:
                raise PromptCamError("--traits is not supported with --detections yet")
            plan = build_plan(options.detections, files, log, run_names=len(options.inputs) > 1)
            identity |= plan.identity()
        check_identity(out, identity, resume=False)
        chunks = list(chunk_files(files, batch_size, {}))
        items = [{"chunk": i, "files": json.dumps([[f.name, str(f.path), f.key, f.size, f.mtime_ns] for f in c])}
                 | ({"plan": pickle.dumps(plan.for_chunk(c))} if plan is not None else {})
                 for i, c in enumerate(chunks)]
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
                                                       "options": run_options, "batch_size": batch_size}))
        records = [ImageRecord.from_dict(r) for row in dataset.iter_rows() for r in json.loads(row["records"])]
        order = {f.key: i for i, f in enumerate(files)}
        records.sort(key=lambda r: order[r.path])
        info = {"engine": f"ray x{ray_options.actors} {ray_options.engine}", "model_dir": str(model_dir),
                "model_sha256": identity["model_sha256"], "precision": manifest.precision, "top_k": options.top_k,
                "traits": options.traits} | inputs_info(collected) | (plan.info() if plan else {})
        formats = [*options.formats, *(["parquet"] if ray_options.parquet and "parquet" not in options.formats
                                       else [])]
        outputs = write_outputs(records, out, manifest.config.class_names, formats, info,
                                classifier=f"promptcam {manifest.config.arch}",
                                detector=plan.detector_facts() if plan else None)
    ok = sum(r.ok for r in records)
    summary = RunSummary(total=len(files), ok=ok, failed=len(records) - ok, skipped_non_images=len(skipped),
                         refused_links=len(collected.refused_links), seconds=time.perf_counter() - started,
                         outputs=outputs)
    log(f"ray: {len(chunks)} chunks over {ray_options.actors} actor(s)")
    return summary
