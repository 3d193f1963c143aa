"""The ``write-triton-repo`` pass: a Triton Inference Server model repository for an exported model.

Layout::

    REPO/promptcam/config.pbtxt            onnxruntime_onnx, dynamic batching
    REPO/promptcam/1/model.onnx
    REPO/promptcam_trt/config.pbtxt        tensorrt_plan (only when an engine was built)
    REPO/promptcam_trt/1/model.plan
    REPO/promptcam_trait_head/config.pbtxt trait ranking tail (CPU)
    REPO/promptcam_trait_head/1/model.onnx
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from promptcam.core.errors import ExportError
from promptcam.core.iospec import PIXELS, model_io, trait_head_io
from promptcam.core.manifest import Manifest
from promptcam.core.triton_config import model_config


@dataclass(frozen=True)
class TritonOptions:
    name: str = "promptcam"
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16)
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_GPU"  # or KIND_CPU

    def __post_init__(self) -> None:
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ExportError(f"Triton instance kind must be KIND_GPU or KIND_CPU, got {self.kind!r}")
        if any(b > self.max_batch_size for b in self.preferred_batch_sizes):
            raise ExportError("preferred batch sizes must not exceed max_batch_size")


def write_triton_repo(
    model_dir: Path, manifest: Manifest, repo: Path, options: TritonOptions = TritonOptions()
) -> Path:
    """Copy the exported model(s) into a versioned Triton repository with generated configs."""
    cfg = manifest.config
    # Triton's batch dimension is implicit: declare the tensors with a symbolic batch
    inputs, outputs = model_io(cfg).to_manifest()
    fixed = manifest.inputs.get(PIXELS, {}).get("shape", [None])[0]
    max_batch = fixed if isinstance(fixed, int) else options.max_batch_size
    preferred = tuple(b for b in options.preferred_batch_sizes if b <= max_batch) or (max_batch,)
    common = dict(max_batch_size=max_batch, preferred=preferred, delay_us=options.max_queue_delay_us,
                  instances=options.instances, manifest_json=manifest.to_json())
    models = [(options.name, "onnxruntime_onnx", "model", "model.onnx", options.kind)]
    if "engine" in manifest.files:
        models.append((f"{options.name}_trt", "tensorrt_plan", "engine", "model.plan", "KIND_GPU"))
    for name, platform, role, file_name, kind in models:
        folder = repo / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest.file(model_dir, role), folder / "1" / file_name)
        (folder / "config.pbtxt").write_text(model_config(name, platform, inputs, outputs, kind=kind, **common))
    head = repo / f"{options.name}_trait_head"
    (head / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(manifest.file(model_dir, "trait_head"), head / "1" / "model.onnx")
    head_inputs, head_outputs = trait_head_io(cfg).to_manifest()
    # the tail's rows are (class, blur set) candidates of one image, not a batch of requests: no batching
    (head / "config.pbtxt").write_text(model_config(head.name, "onnxruntime_onnx", head_inputs, head_outputs,
                                                    max_batch_size=0, preferred=(), delay_us=0, instances=1,
                                                    kind="KIND_CPU"))
    return repo
