"""Triton ``config.pbtxt`` text from the model's tensors, shared by the repository writer (``export
--triton-repo``) and ``promptcam serve``: one writer, so both servers declare the same tensors."""

from __future__ import annotations

import json

from .manifest import METADATA_KEY

TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _tensor(name: str, spec: dict, batched: bool) -> str:
    # with batching, Triton's dims exclude the batch dimension; symbolic sizes are -1
    shape = spec["shape"][1:] if batched else spec["shape"]
    # a batch-only tensor (top_class [B]): Triton wants dims [1] reshaped to a scalar per request
    reshape = "\n    reshape: { shape: [ ] }" if batched and not shape else ""
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape or [1])
    return (f'  {{\n    name: "{name}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n    dims: [ {dims} ]'
            f'{reshape}\n  }}')


def model_config(name: str, platform: str, inputs: dict, outputs: dict, *, max_batch_size: int,
                 preferred: tuple[int, ...], delay_us: int, instances: int, kind: str,
                 manifest_json: str | None = None, backend: str | None = None,
                 parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig); ``max_batch_size=0``: no batching.

    Args:
        platform: ``onnxruntime_onnx``, ``tensorrt_plan`` ... (empty when ``backend`` names one, e.g. ``python``).
        manifest_json: Stored as the ``promptcam_manifest`` parameter (clients compare it with their manifest).
        parameters: Further string parameters (``promptcam serve``'s model folder, engine ...).
    """
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'backend: "{backend}"' if backend else f'platform: "{platform}"',
             f"max_batch_size: {max_batch_size}",
             "version_policy: { latest: { num_versions: 1 } }",
             "input [\n" + ",\n".join(_tensor(n, s, batched) for n, s in inputs.items()) + "\n]",
             "output [\n" + ",\n".join(_tensor(n, s, batched) for n, s in outputs.items()) + "\n]"]
    if batched:
        preferred_line = ("  preferred_batch_size: [ " + ", ".join(map(str, preferred)) + " ]\n") if preferred else ""
        lines.append(f"dynamic_batching {{\n{preferred_line}  max_queue_delay_microseconds: {delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    values = dict(parameters or {})
    if manifest_json is not None:
        values[METADATA_KEY] = manifest_json
    for key, value in values.items():
        # a JSON string literal is a valid protobuf text string
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(value)} }}\n}}')
    return "\n".join(lines) + "\n"
