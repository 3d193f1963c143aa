"""Session fixtures: tiny checkpoints and exports built once; the synthetic trained model built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY, perturbed_model, project_checkpoint  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"cpu cores: {os.cpu_count()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the trained demo model run last: under pytest-xdist the other worker gets through the
    rest of the suite while one worker trains the model (minutes), and they then share it."""
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

    Under pytest-xdist the workers share one cache folder behind a file lock: the first trains, the
    others reuse its stages (``run_demo`` caches each one).
    """
    from filelock import FileLock

    from promptcam.train.demo import run_demo

    # PROMPTCAM_TEST_CACHE reuses a demo cache across runs while developing; CI builds it fresh
    env = os.environ.get("PROMPTCAM_TEST_CACHE")
    if env:
        cache = Path(env)
    elif not hasattr(request.config, "workerinput"):  # not an xdist worker
        cache = tmp_path_factory.mktemp("demo_cache")
    else:
        cache = tmp_path_factory.getbasetemp().parent / "demo_cache"  # shared by this run's workers
    out = tmp_path_factory.mktemp("demo_out")
    with FileLock(str(cache) + ".lock"):
        summary = run_demo(out, cache, log=lambda _: None)
    return {"world": cache / "world", "ckpt": cache / "run" / "best.pt", "model": cache / "model", "out": out,
            "summary": summary}
