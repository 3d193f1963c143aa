"""The field-station runtime runs with torch and timm unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers import run_cli

BLOCKER = textwrap.dedent("""
    import sys

    class _NoTorch:
        # A field station has no torch or timm: any attempt to import them fails loudly.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "timm", "torchvision"):
                raise ImportError(f"{name} is blocked: the runtime must not import it")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def _blocked_env(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": str(site)}


def _expected_auto_engine(model_dir) -> str:  # noqa: ANN001
    """What ``auto`` must pick for a model directory without a TensorRT plan: ORT CUDA where it starts."""
    from promptcam.core.errors import PromptCamError
    from promptcam.runtime import Predictor

    try:
        Predictor(model_dir, engine="ort-cuda")
    except PromptCamError:
        return "ort-cpu"
    return "ort-cuda"


def test_blocker_really_blocks(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                            env={**_blocked_env(tmp_path), "PATH": ""})
    assert result.returncode != 0 and "blocked" in result.stderr


def test_predictor_without_torch(tiny_export, tmp_path) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from promptcam.runtime import Predictor
        predictor = Predictor({str(tiny_export)!r}, engine="auto")
        images = [np.random.default_rng(i).integers(0, 256, (50 + i, 70, 3), dtype=np.uint8) for i in range(3)]
        results = predictor.predict(images, traits=2)
        print(json.dumps({{"engine": predictor.engine_description, "top1": [r.top1.name for r in results],
                          "traits": [r.traits[r.top1.index].top_heads for r in results],
                          "torch_loaded": "torch" in sys.modules or "timm" in sys.modules}}))
    """)
    import os

    env = {**os.environ, **_blocked_env(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["engine"].startswith(_expected_auto_engine(tiny_export)) and not out["torch_loaded"]
    assert len(out["top1"]) == 3 and all(len(t) == 2 for t in out["traits"])


def test_run_cli_without_torch(tiny_export, tmp_path) -> None:
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.jpg"), np.full((30, 40, 3), 40 * i, np.uint8))
    result = run_cli("promptcam-run", "--model", tiny_export, images, "--out", tmp_path / "out",
                     "--heatmaps", tmp_path / "heat", "--traits", "2", "--no-progress", env=_blocked_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "3 classified, 0 failed" in result.stdout
