"""The layering is real: core <- runtime (torch-free) <- results <- batch / station / review / serving / cli
<- explain / models / export / train / benchmarks, and no module imports itself back in a circle.

Three checks: every module's import statements (static, so a lazy import inside a function counts
too), importing the light layers in a fresh interpreter where the heavy packages are blocked, and
the module import graph of the whole package, which must have no cycle.
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
APPLICATIONS = ("batch", "station", "review", "serving", "cli")
TOP = ("explain", "models", "train", "export", "benchmarks")


def _packages(*names: str) -> set[str]:
    return {f"promptcam.{p}" for p in names}


# what each layer may not import (third-party roots and promptcam subpackages)
FORBIDDEN = {
    "core": HEAVY | {"onnxruntime", "tensorrt", "cv2", "ray"} | _packages("runtime", "results", *APPLICATIONS, *TOP),
    "runtime": HEAVY | _packages("results", *APPLICATIONS, *TOP),
    "results": HEAVY | {"onnxruntime", "tensorrt", "cv2"} | _packages(*APPLICATIONS, *TOP),
    # the applications are siblings: each builds on runtime and results, none on another
    "batch": HEAVY | _packages("station", "review", "serving", "cli", *TOP),
    "station": HEAVY | _packages("batch", "review", "serving", "cli", *TOP),
    "review": HEAVY | _packages("batch", "station", "serving", "cli", *TOP),
    "serving": HEAVY | _packages("batch", "station", "review", "cli", *TOP),
    "cli": HEAVY | _packages(*TOP),
    "explain": _packages("train", "export", "benchmarks", "cli"),
    "models": _packages("explain", "train", "export", "benchmarks", "cli"),
    "export": _packages("train", "benchmarks", "cli"),
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
    (["promptcam.runtime.images", "promptcam.runtime.heatmap", "promptcam.results.formats"],
     sorted(HEAVY | {"onnxruntime", "tensorrt"})),
    (["promptcam.runtime", "promptcam.runtime.predictor", "promptcam.batch.run", "promptcam.serving.server",
      "promptcam.runtime.backends.served"], sorted(HEAVY)),
])
def test_light_layers_import_with_heavy_packages_blocked(modules: list[str], blocked: list[str]) -> None:
    code = BLOCK.format(blocked=blocked) + "".join(f"import {m}\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (statically, lazy imports included). ``from P import x``
    counts as importing ``P.x`` when that is a module, else ``P``."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles() -> None:
    """A package __init__ importing its own submodules (a lazy table) is the one allowed back-edge shape:
    it is not an import of the package by itself, so it never forms a circle here."""
    assert find_cycle(import_graph(PACKAGE)) is None


def test_circle_check_catches_a_circle(tmp_path) -> None:
    """The circle check can fail: two modules importing each other (one lazily, as the old
    pipeline <-> detection_run pair did) are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("thing = 1\ndef later():\n    from pkg.a import thing\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("thing = 1\n")
    assert find_cycle(import_graph(pkg)) is None
