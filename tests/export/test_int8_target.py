"""int8 gates are a property of the kernels that ran them (issue 30): the export records the architecture,
the runtime warns on any other, and ``promptcam validate-int8`` re-runs the gates on the station and records it.

The architecture is monkeypatched here (this machine is x86_64); the real aarch64 run is
``benchmarks/arm64.sh`` (its recorded report: tests/benchmarks/test_arm64_report.py).
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import run_cli
from promptcam.core.architecture import int8_architecture_warning, machine_architecture, validated_architectures
from promptcam.core.errors import ManifestError
from promptcam.core.manifest import read_manifest
from promptcam.export.target import validate_on_target
from promptcam.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def tiny_int8(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DINO-layout checkpoint of ``tiny_export``, exported dynamic int8 (it passes its gates here)."""
    from promptcam.export.passes import ExportOptions, export_model

    out = tmp_path_factory.mktemp("int8") / "dino"
    export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=out, precision="int8", int8_mode="dynamic",
                               int8_synthetic_images=8, int8_search=False), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC))
    return folder


def test_architecture_names() -> None:
    assert machine_architecture("AMD64") == machine_architecture("x86_64") == "x86_64"
    assert machine_architecture("arm64") == machine_architecture("aarch64") == "aarch64"


def test_warning_rule() -> None:
    on_x86 = {"int8_gates": {"validated_on": [{"architecture": "x86_64"}]}}
    assert int8_architecture_warning("int8", on_x86, "m", machine="x86_64") is None
    warning = int8_architecture_warning("int8", on_x86, "m", machine="aarch64")
    assert warning and "ran on x86_64" in warning and "aarch64" in warning and "promptcam validate-int8 m" in warning
    assert int8_architecture_warning("fp32", {}, "m", machine="aarch64") is None  # fp32 kernels: no gates
    assert "unrecorded" in int8_architecture_warning("int8", {"int8_gates": {"passed": True}}, "m", machine="x86_64")
    hostile = {"int8_gates": {"validated_on": ["aarch64", {"architecture": 3}, None]}}  # a hand-edited manifest
    assert validated_architectures(hostile) == []
    assert int8_architecture_warning("int8", hostile, "m", machine="aarch64") is not None


def test_export_records_its_architecture(tiny_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gates = read_manifest(tiny_int8).validation["int8_gates"]
    assert gates["passed"] and [e["architecture"] for e in gates["validated_on"]] == [machine_architecture()]
    with Predictor(tiny_int8, "ort-cpu"):
        pass
    assert "quality gates ran on" not in capsys.readouterr().err


def test_runtime_warns_on_another_architecture_until_validated_there(
        tiny_int8: Path, tiny_export: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "int8"
    shutil.copytree(tiny_int8, model)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with Predictor(model, "ort-cpu"):
        pass
    err = capsys.readouterr().err
    assert "quality gates ran on x86_64, not on this machine's aarch64" in err and "validate-int8" in err

    result = validate_on_target(model, tiny_export, sorted(images.glob("*.png")), threads=1)
    assert result["passed"] and result["recorded"] and result["numbers"]["images"] == 6
    assert validated_architectures(read_manifest(model).validation) == ["x86_64", "aarch64"]
    capsys.readouterr()  # validate-int8 itself loaded the model before it was validated here
    with Predictor(model, "ort-cpu"):
        pass
    assert "quality gates ran on" not in capsys.readouterr().err
    # the graphs' embedded manifests still agree with manifest.json (validation is not compared)
    assert read_manifest(model).config == read_manifest(tiny_int8).config


def test_missed_gates_record_nothing_and_fail_the_command(tiny_int8: Path, tiny_export: Path, images: Path,
                                                          tmp_path: Path) -> None:
    model = tmp_path / "int8"
    shutil.copytree(tiny_int8, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["validation"]["int8_gates"]["gates"]["attention_min"] = 1.0  # no int8 map correlates exactly 1.0
    (model / "manifest.json").write_text(json.dumps(manifest))
    before = (model / "manifest.json").read_text()
    result = run_cli("promptcam", "validate-int8", str(model), "--reference", str(tiny_export), "--images", str(images),
                     "--threads", "1")
    assert result.returncode == 1 and "int8 gates missed" in result.stderr and "attention correlation" in result.stderr
    assert (model / "manifest.json").read_text() == before


def test_reference_must_be_the_same_model(tiny_int8: Path, tiny_checkpoints: dict[str, Path], images: Path,
                                          tmp_path: Path) -> None:
    from promptcam.export.passes import ExportOptions, export_model

    other = tmp_path / "other"
    export_model(ExportOptions(ckpt=next(p for n, p in tiny_checkpoints.items() if n != "dino"), out=other,
                               validate=False), log=lambda _: None)
    with pytest.raises(ManifestError, match="not the fp32 export of the same model"):
        validate_on_target(tiny_int8, other, sorted(images.glob("*.png")))
    with pytest.raises(ManifestError, match="not int8"):
        validate_on_target(other, other, sorted(images.glob("*.png")))
