"""Load-time checks of a model directory: manifest, ONNX metadata and graph tensors agree, files stay inside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from promptcam.core.atomic import file_sha256
from promptcam.core.errors import BackendUnavailableError, ManifestError
from promptcam.core.manifest import read_manifest
from promptcam.runtime import Predictor
from promptcam.runtime.backends.onnxruntime import OrtBackend, trt_cache_dir


def _copy(tiny_export: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_export, model_dir)
    return model_dir


def _edit_manifest(model_dir: Path, edit) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _load_error(model_dir: Path) -> str:
    with pytest.raises(ManifestError) as info:
        Predictor(model_dir, "ort-cpu")
    return str(info.value)


def test_untampered_directory_loads(tiny_export) -> None:
    with Predictor(tiny_export, "ort-cpu") as predictor:
        assert predictor.trait_ranker().session is not None
        assert predictor.predict([np.zeros((20, 30, 3), np.uint8)], traits=1)[0].traits


def test_class_count_changed(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)

    def six_classes(data: dict) -> None:
        data["config"]["num_classes"] = 6
        data["config"]["class_names"].append("class_005")

    _edit_manifest(model_dir, six_classes)
    message = _load_error(model_dir)
    with pytest.raises(ManifestError, match="does not describe the model files"):
        Predictor(model_dir)  # engine auto: a broken directory is not a reason to try another engine
    assert message.startswith(f"{model_dir / 'manifest.json'} does not describe the model files beside it")
    assert "nothing was loaded" in message
    # every difference, of both files: the metadata of each, and the graph's class-sized outputs
    assert "model.onnx: num_classes: manifest.json has 6, model.onnx has 5" in message
    assert "trait_head.onnx: num_classes: manifest.json has 6, trait_head.onnx has 5" in message
    assert "model.onnx: tensor 'logits' has shape ['batch', 5], expected ['batch', 6]" in message
    assert "model.onnx: tensor 'attention' has shape" in message


def test_image_size_changed(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    _edit_manifest(model_dir, lambda data: data["config"].update(img_size=72))
    message = _load_error(model_dir)
    assert "model.onnx: img_size: manifest.json has 72, model.onnx has 64" in message
    assert "model.onnx: tensor 'pixels' has shape ['batch', 64, 64, 3], expected ['batch', 72, 72, 3]" in message
    assert "trait_head.onnx: img_size: manifest.json has 72, trait_head.onnx has 64" in message


def test_class_names_reordered(tiny_export, tmp_path) -> None:
    """Same count, another order: the graph's tensors match, so only the metadata can tell -- and does."""
    model_dir = _copy(tiny_export, tmp_path)
    _edit_manifest(model_dir, lambda data: data["config"]["class_names"].reverse())
    message = _load_error(model_dir)
    assert ("model.onnx: class_names are in another order (first at index 0: manifest.json has 'class_004', "
            "model.onnx has 'class_000')") in message
    assert "tensor" not in message


def test_precision_changed(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    _edit_manifest(model_dir, lambda data: data.update(precision="fp16"))
    assert "precision: manifest.json has 'fp16', model.onnx has 'fp32'" in _load_error(model_dir)


@pytest.mark.parametrize("entry", ["../x.onnx", "/etc/passwd", "sub/model.onnx", "..", ""])
def test_files_entries_must_be_plain_names(entry: str, tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    (tmp_path / "x.onnx").write_bytes((model_dir / "model.onnx").read_bytes())  # a real model outside
    _edit_manifest(model_dir, lambda data: data["files"].update(model=entry))
    message = _load_error(model_dir)
    assert f"files['model'] = {entry!r}" in message and str(model_dir / "manifest.json") in message
    with pytest.raises(ManifestError, match="plain file name|not a file name"):
        read_manifest(model_dir)


def test_symlink_leading_out_is_refused(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(model_dir / "trait_head.onnx", outside)
    (model_dir / "trait_head.onnx").symlink_to(outside)
    assert "a link leading out of" in _load_error(model_dir)
    # a link to a file inside the directory is fine
    (model_dir / "trait_head.onnx").unlink()
    shutil.move(outside, model_dir / "head_v1.onnx")
    (model_dir / "trait_head.onnx").symlink_to("head_v1.onnx")
    Predictor(model_dir, "ort-cpu").close()


def test_corrupt_trait_head_found_at_load(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    head = model_dir / "trait_head.onnx"
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    message = _load_error(model_dir)
    assert message.startswith(f"{head}: ONNX Runtime cannot load the trait head")


def test_missing_trait_head_found_at_load(tiny_export, tmp_path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    (model_dir / "trait_head.onnx").unlink()
    assert "trait_head.onnx: listed in the manifest as 'trait_head' but missing" in _load_error(model_dir)


def test_swapped_graphs_are_refused(tiny_export, tmp_path) -> None:
    """trait_head.onnx where model.onnx should be: every missing tensor is named."""
    model_dir = _copy(tiny_export, tmp_path)
    shutil.copy(model_dir / "trait_head.onnx", model_dir / "model.onnx")
    message = _load_error(model_dir)
    assert "model.onnx: tensor 'pixels' is missing" in message and "model.onnx: tensor 'logits' is missing" in message


def test_ort_trt_cache_is_keyed_by_model_bytes(tiny_export, tmp_path) -> None:
    """Re-exporting another checkpoint into the same directory must never reuse the old engines."""
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_export / "model.onnx", model)
    first = trt_cache_dir(model)
    assert first.parent == tmp_path / "ort_trt_cache" and first.name == file_sha256(model)[:16]
    assert trt_cache_dir(model) == first
    shutil.copy(tiny_export / "trait_head.onnx", model)  # other bytes under the same name
    assert trt_cache_dir(model) != first
    assert trt_cache_dir(model, tmp_path / "cache").parent == tmp_path / "cache"


def test_backends_are_context_managers(tiny_export) -> None:
    with OrtBackend(tiny_export / "model.onnx", "ort-cpu", threads=1) as backend:
        assert backend.infer(np.zeros((1, 64, 64, 3), np.uint8), ("logits",))["logits"].shape == (1, 5)
    with pytest.raises(BackendUnavailableError, match="closed"):
        backend.infer(np.zeros((1, 64, 64, 3), np.uint8), ("logits",))
    backend.close()  # idempotent
