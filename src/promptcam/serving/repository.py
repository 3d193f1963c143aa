"""What ``tritonserver`` needs to run a promptcam model: the binary, a Python backend and a model repository.

The binary and the Python backend come from the ``nvidia-pytriton`` wheel (the ``serve`` extra), which
bundles Triton Inference Server with a backend stub per Python version. The repository holds one model,
``promptcam``: a ``config.pbtxt`` written from ``iospec`` (the same writer as ``export --triton-repo``)
and a ``model.py`` that is ``serving.model.TritonPythonModel``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import promptcam
from promptcam.core.errors import BackendUnavailableError
from promptcam.core.iospec import model_io
from promptcam.core.manifest import Manifest
from promptcam.core.triton_config import model_config
from promptcam.runtime.backends.served import SERVED_MODEL

from .model import ENGINE, MODEL_DIR, PYTHON, STATUS_FILE, THREADS

# the stub ignores PYTHONPATH: the shim puts the promptcam that wrote it first (a source checkout included)
MODEL_SHIM = """import sys

sys.path.insert(0, {root!r})
from promptcam.serving.model import TritonPythonModel  # noqa: E402,F401 - Triton looks this name up
"""


@dataclass(frozen=True)
class TritonDistribution:
    """The parts of the ``nvidia-pytriton`` wheel that ``promptcam serve`` runs."""

    binary: Path
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version
    libs: Path  # the wheel's shared libraries (nvidia_pytriton.libs)


def find_distribution() -> TritonDistribution:
    """Locate Triton in the installed ``nvidia-pytriton`` wheel, without importing PyTriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("promptcam serve needs Triton Inference Server from the nvidia-pytriton "
                                      "wheel (Linux x86_64/aarch64, glibc >= 2.35): pip install 'promptcam[serve]'")
    root = Path(list(spec.submodule_search_locations)[0])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    server = root / "tritonserver"
    dist = TritonDistribution(binary=server / "bin" / "tritonserver", python_backend=server / "backends" / "python",
                              stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
                              libs=root.parent / "nvidia_pytriton.libs")
    missing = [str(p) for p in (dist.binary, dist.python_backend, dist.stub) if not p.exists()]
    if missing:
        raise BackendUnavailableError(f"the nvidia-pytriton wheel lacks {', '.join(missing)} (no Triton build for "
                                      f"Python {version} on this platform?)")
    return dist


def server_environment(dist: TritonDistribution) -> dict[str, str]:
    """The environment of ``tritonserver`` and of the stub it starts.

    The stub links ``libpython3.X.so.1.0`` by name: it must be this interpreter's (a system libpython of
    another patch release fails in ``multiprocessing``), so its folder goes first. The stub's Python finds
    its packages through ``PATH`` (this environment's ``bin``).
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    first = [libdir] if libdir and soname and (Path(libdir) / soname).exists() else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*first, str(dist.libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_backend_folder(dist: TritonDistribution, folder: Path) -> Path:
    """``folder/python/`` with Triton's Python backend and this Python's stub (links into the wheel)."""
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (dist.python_backend / "libtriton_python.so", dist.python_backend / "triton_python_backend_utils.py",
                   dist.stub):
        (python / source.name).symlink_to(source)
    return folder


def write_model_repository(repo: Path, model_dir: Path, manifest: Manifest, *, engine: str, threads: int | None,
                           max_batch_size: int, max_queue_delay_us: int, status_file: Path) -> Path:
    """``repo/promptcam/{config.pbtxt, 1/model.py}`` serving ``model_dir`` with dynamic batching."""
    inputs, outputs = model_io(manifest.config).to_manifest()
    parameters = {MODEL_DIR: str(model_dir.resolve()), ENGINE: engine, THREADS: str(threads or ""),
                  STATUS_FILE: str(status_file), PYTHON: sys.executable}
    folder = repo / SERVED_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    source_root = Path(promptcam.__file__).resolve().parent.parent
    (folder / "1" / "model.py").write_text(MODEL_SHIM.format(root=str(source_root)))
    (folder / "config.pbtxt").write_text(model_config(
        SERVED_MODEL, "", inputs, outputs, max_batch_size=max_batch_size, preferred=(), delay_us=max_queue_delay_us,
        instances=1, kind="KIND_CPU", manifest_json=manifest.to_json(), backend="python", parameters=parameters))
    return repo
