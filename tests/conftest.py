"""Session fixtures: tiny checkpoints and exports built once; the synthetic trained model built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ALL_CORES = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def _pin_xdist_worker() -> None:
    """Each pytest-xdist worker on its own share of the cores, before torch or ONNX Runtime load.

    Left alone, every worker's torch and ONNX Runtime size their thread pools to all the cores, and on 2
    cores two workers ran 4 spinning threads: a small training test took 8.5 s in the suite against
    1.3 s alone. Both size their pools by the affinity mask, as ``runtime``'s ``default_threads`` does,
    and the commands a test starts inherit it. The trained demo model, built while the other workers
    wait for it, is built on every core (``trained_world``).
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or count < 2 or len(ALL_CORES) < 2:
        return
    index = int(worker.removeprefix("gw"))
    share = {core for position, core in enumerate(sorted(ALL_CORES)) if position % count == index % count}
    os.sched_setaffinity(0, share or ALL_CORES)


_pin_xdist_worker()
sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY, perturbed_model, project_checkpoint  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"cpu cores: {os.cpu_count()}"


def _session_root(config: pytest.Config) -> Path:
    """The temp root of this pytest session, shared by its xdist workers."""
    base = config._tmp_path_factory.getbasetemp()  # noqa: SLF001 - the session's own temp root
    return base.parent if hasattr(config, "workerinput") else base


def demo_cache(config: pytest.Config) -> Path:
    """Where the trained demo model is built: PROMPTCAM_TEST_CACHE (kept across runs while developing), else
    one folder of this session shared by its xdist workers (CI builds it fresh)."""
    env = os.environ.get("PROMPTCAM_TEST_CACHE")
    return Path(env) if env else _session_root(config) / "demo_cache"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the trained demo model run last: under pytest-xdist the other worker gets through the
    rest of the suite while one worker trains the model (minutes), and they then share it. (Training in a
    process of its own from the start was measured slower: 998 s against 754 s, its two torch threads and
    the workers' contending for the two cores.)"""
    items.sort(key=lambda item: "trained_world" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Project-format checkpoints of both tiny backbones."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: project_checkpoint(perturbed_model(**spec), root / name / "model.pt") for name, spec in TINY.items()}


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DINO-layout model exported (fp32, dynamic batch)."""
    from promptcam.export.passes import ExportOptions, export_model

    out = tmp_path_factory.mktemp("export") / "dino"
    export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=out), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_predictor(tiny_export: Path):  # noqa: ANN201 - a Predictor (the runtime imports lazily)
    """A Predictor of ``tiny_export`` on the CPU, batch 8, one thread."""
    from promptcam.runtime.predictor import Predictor

    with Predictor(tiny_export, "ort-cpu", batch_size=8, threads=1) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Path]:
    """The synthetic world, a pretrained micro backbone, trained prompts and their export (minutes).

    Under pytest-xdist the workers share one cache folder behind a file lock: the first trains and runs the
    demo (its run over the held-out images, scores, gallery, faithfulness), the others read what it made.
    """
    from filelock import FileLock

    cache = demo_cache(request.config)
    out = cache / "demo_out"  # the demo's run, scores and faithfulness: made once, read by every worker
    with FileLock(str(cache) + ".lock"):
        done = out / "summary.json"
        built = (cache / "model" / "manifest.json").is_file()
        if not (done.is_file() and built
                and done.stat().st_mtime >= (cache / "model" / "manifest.json").stat().st_mtime):
            _build_demo(cache, out)
        summary = json.loads(done.read_text())
    return {"world": cache / "world", "ckpt": cache / "run" / "best.pt", "model": cache / "model", "out": out,
            "summary": summary}


# 16 images of the faithfulness table, not the demo's 64: its code runs, a quarter of its minutes
_BUILD_DEMO = """
import os, sys
from pathlib import Path
if sys.argv[3]:  # every core, before torch sizes its thread pool
    os.sched_setaffinity(0, {int(core) for core in sys.argv[3].split(",")})
from promptcam.train.demo import run_demo
run_demo(Path(sys.argv[2]), Path(sys.argv[1]), log=lambda line: print(line, flush=True), faithfulness_images=16)
"""


def _build_demo(cache: Path, out: Path) -> None:
    """Train and run the demo in a process of its own on every core (the other workers wait for it): in a
    worker that had run 300 tests the same training took 317 s against 282 s in a fresh process."""
    cache.mkdir(parents=True, exist_ok=True)
    log = cache.parent / (cache.name + ".log")
    cores = ",".join(str(core) for core in sorted(ALL_CORES))
    with open(log, "w") as sink:
        code = subprocess.call([sys.executable, "-c", _BUILD_DEMO, str(cache), str(out), cores], stdout=sink,
                               stderr=subprocess.STDOUT, timeout=1800)
    assert code == 0, f"the demo build failed (exit {code}):\n{log.read_text()[-3000:]}"
