"""Session fixtures: tiny checkpoints and exports built once; the synthetic trained model built once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

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


# the demo's world, backbone, prompts and export, built in a process of its own (under the cache's lock)
BUILDER = """
import sys
from pathlib import Path
from filelock import FileLock
from promptcam.train.demo import build_demo_model
cache = Path(sys.argv[1])
with FileLock(str(cache) + ".lock"):
    build_demo_model(cache, log=lambda _: None)
"""
BUILDER_MARK = "demo_builder.pid"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the trained demo model run last, and the model starts training now, in a process of its own.

    Training takes minutes; started at collection it overlaps the rest of the suite instead of holding every
    xdist worker at the ``trained_world`` fixture's lock at the end. One builder per session: the first
    worker to collect starts it (an exclusive marker file holding its pid); the fixture waits on the cache's
    lock, and builds whatever is missing itself if the builder is gone.
    """
    items.sort(key=lambda item: "trained_world" in getattr(item, "fixturenames", ()))
    if not any("trained_world" in getattr(item, "fixturenames", ()) for item in items):
        return
    cache, mark = demo_cache(config), _session_root(config) / BUILDER_MARK
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another worker started it
    import subprocess

    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(cache)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.write(fd, str(builder.pid).encode())
    os.close(fd)


def pytest_unconfigure(config: pytest.Config) -> None:
    """When the whole session ends (the xdist controller, or a run without xdist), a builder still training (a
    -k run without its tests, a Ctrl-C) is stopped: no training is left behind."""
    if hasattr(config, "workerinput") or not hasattr(config, "_tmp_path_factory"):
        return
    import signal

    try:
        pid = int((_session_root(config) / BUILDER_MARK).read_text() or 0)
    except (OSError, ValueError):
        return
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: the builder and anything it started
        except OSError:
            pass  # already done


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

    Under pytest-xdist the workers share one cache folder behind a file lock: the first trains, the
    others reuse its stages (``run_demo`` caches each one).
    """
    from filelock import FileLock

    from promptcam.train.demo import run_demo

    cache = demo_cache(request.config)  # being built by the session's builder (pytest_collection_modifyitems)
    out = cache / "demo_out"  # the demo's run, scores and faithfulness: made once, read by every worker
    with FileLock(str(cache) + ".lock"):
        done = out / "summary.json"
        built = (cache / "model" / "manifest.json").is_file()
        if done.is_file() and built and done.stat().st_mtime >= (cache / "model" / "manifest.json").stat().st_mtime:
            summary = json.loads(done.read_text())
        else:
            summary = run_demo(out, cache, log=lambda _: None)
    return {"world": cache / "world", "ckpt": cache / "run" / "best.pt", "model": cache / "model", "out": out,
            "summary": summary}
