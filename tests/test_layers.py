"""The layering is real: core <- runtime (torch-free) <- models / train / export / benchmarks.

Two checks: every module's import statements (static, so a lazy import inside a function counts
too), and importing the light layers in a fresh interpreter where the heavy packages are blocked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import promptcam

PACKAGE = Path(promptcam.__file__).parent
HEAVY = {"torch", "timm", "torchvision", "onnx"}
# what each layer may not import (third-party roots and promptcam subpackages)
FORBIDDEN = {
    "core": HEAVY | {"onnxruntime", "tensorrt", "cv2", "ray"} | {f"promptcam.{p}" for p in (
        "runtime", "models", "train", "export", "benchmarks")},
    "runtime": HEAVY | {f"promptcam.{p}" for p in ("models", "train", "export", "benchmarks")},
    "review": HEAVY | {f"promptcam.{p}" for p in ("models", "train", "export", "benchmarks")},
    "models": {f"promptcam.{p}" for p in ("train", "export", "benchmarks")},
    "export": {f"promptcam.{p}" for p in ("train", "benchmarks")},
}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against ``package``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def _violations(layer: str, folder: Path | None = None) -> list[str]:
    folder = folder or PACKAGE / layer
    found = []
    for path in sorted(folder.rglob("*.py")):
        package = ".".join(("promptcam", layer, *path.relative_to(folder).parts[:-1]))
        for name in _imports(path, package):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                found.append(f"{path.relative_to(folder)} imports {name}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    assert _violations(layer) == []


def test_static_check_catches_a_violation(tmp_path) -> None:
    """The checker itself can fail: an upward import in a throwaway module is found."""
    (tmp_path / "probe.py").write_text("def f():\n    import torch\n    from ..runtime import images\n")
    found = _violations("core", tmp_path)
    assert sorted(found) == ["probe.py imports promptcam.runtime", "probe.py imports torch"], found


BLOCK = textwrap.dedent("""
    import sys
    BLOCKED = {blocked!r}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(name + " is blocked in this layer")
    sys.meta_path.insert(0, Block())
""")


@pytest.mark.parametrize(("modules", "blocked"), [
    (["promptcam.core", "promptcam.core.manifest", "promptcam.core.traits", "promptcam.core.iospec"],
     sorted(HEAVY | {"onnxruntime", "tensorrt", "cv2"})),
    (["promptcam.runtime.images", "promptcam.runtime.heatmap", "promptcam.runtime.results"],
     sorted(HEAVY | {"onnxruntime", "tensorrt"})),
    (["promptcam.runtime", "promptcam.runtime.predictor", "promptcam.runtime.pipeline"], sorted(HEAVY)),
])
def test_light_layers_import_with_heavy_packages_blocked(modules: list[str], blocked: list[str]) -> None:
    code = BLOCK.format(blocked=blocked) + "".join(f"import {m}\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
