"""Load-time checks: the graphs a model directory holds are the ones its manifest describes.

Three sources must agree before anything runs: ``manifest.json``, the manifest JSON each ONNX file
carries in its ``metadata_props`` (read through ONNX Runtime, not the ``onnx`` package) and the
tensors the loaded graph actually has, against ``promptcam.core.iospec``. Every difference becomes
one sentence of one ``ManifestError``: a manifest whose class count, class order or image size
disagrees with the graph would otherwise give an ``IndexError``, a raw ORT error or, worse,
silently wrong labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from promptcam.core.errors import ManifestError
from promptcam.core.iospec import GraphSpec, model_io, shape_mismatches, trait_head_io
from promptcam.core.manifest import MANIFEST_NAME, METADATA_KEY, Manifest, manifest_differences

from .base import Backend, LoadedTensors

# ONNX Runtime's type strings -> the numpy names iospec uses
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
             "tensor(bool)": "bool"}


def ort_tensors(session: ort.InferenceSession) -> LoadedTensors:
    """``{name: (dtype, shape)}`` of a session's inputs and outputs (symbolic dimensions by name, or None)."""
    return {t.name: (ORT_TYPES.get(t.type, t.type), tuple(d if isinstance(d, int | str) else None for d in t.shape))
            for t in (*session.get_inputs(), *session.get_outputs())}


def ort_metadata(session: ort.InferenceSession) -> str | None:
    return session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)


def graph_problems(
    file_name: str,
    spec: GraphSpec,
    tensors: LoadedTensors,
    metadata: str | None,
    manifest: Manifest,
    *,
    has_metadata: bool = True,
) -> list[str]:
    """Sentences saying where one loaded graph disagrees with ``spec`` and with ``manifest``.

    Args:
        file_name: The graph's file name, to start each sentence.
        spec: What ``iospec`` declares for the manifest's config.
        tensors: The loaded graph's tensors.
        metadata: The manifest JSON embedded in the file.
        manifest: ``manifest.json``.
        has_metadata: False for files that carry none (TensorRT plans): skip that comparison.
    """
    problems = [f"{file_name}: tensor {p}" for p in shape_mismatches(spec, tensors)]
    if not has_metadata:
        return problems
    if metadata is None:
        return [*problems, f"{file_name}: has no {METADATA_KEY!r} metadata (not written by promptcam-export)"]
    try:
        embedded = Manifest.from_dict(json.loads(metadata), origin=f"{file_name} metadata")
    except (json.JSONDecodeError, ManifestError) as exc:
        return [*problems, f"{file_name}: its {METADATA_KEY!r} metadata is not a valid manifest ({exc})"]
    return problems + [f"{file_name}: {p}" for p in manifest_differences(manifest, embedded, file_name)]


def check_model_files(
    model_dir: Path,
    manifest: Manifest,
    backend: Backend,
    trait_head: ort.InferenceSession | None,
    *,
    model_file: str,
    trait_head_file: str | None = None,
) -> None:
    """Raise one ``ManifestError`` listing every disagreement of the loaded graphs with the manifest.

    Args:
        model_dir: The model directory (named in the error).
        manifest: Its ``manifest.json``.
        backend: The backend holding the main graph (ONNX model or TensorRT plan).
        trait_head: The loaded ``trait_head.onnx`` (None: not checked).
        model_file / trait_head_file: Their file names, for the sentences.
    """
    metadata = backend.metadata()
    problems = graph_problems(model_file, model_io(manifest.config), backend.tensors(), metadata, manifest,
                              has_metadata=backend.carries_metadata)
    if trait_head is not None:
        problems += graph_problems(trait_head_file or "trait_head.onnx", trait_head_io(manifest.config),
                                   ort_tensors(trait_head), ort_metadata(trait_head), manifest)
    if problems:
        raise ManifestError(f"{Path(model_dir) / MANIFEST_NAME} does not describe the model files beside it "
                            f"({len(problems)} difference{'s' if len(problems) > 1 else ''}); nothing was loaded:"
                            "\n  " + "\n  ".join(problems))
