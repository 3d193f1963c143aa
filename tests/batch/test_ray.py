"""Ray Data batch inference on a local Ray instance with 2 CPU actors: same results as a local run."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from helpers import run_cli

ray = pytest.importorskip("ray", reason="needs the ray extra")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, trained_world):
    images = tmp_path_factory.mktemp("ray_images")
    for class_dir in sorted((trained_world["world"] / "val").iterdir())[:3]:
        for path in sorted(class_dir.glob("*.png"))[:5]:
            shutil.copy(path, images / f"{class_dir.name}_{path.name}")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (images / "empty.png").write_bytes(b"")
    (images / "notes.txt").write_text("skip me")
    return images


def test_ray_run_matches_local_run(trained_world, folder, tmp_path) -> None:
    model = trained_world["model"]
    local = run_cli("promptcam-run", "--model", model, folder, "--out", tmp_path / "local", "--engine", "ort-cpu",
                    "--batch-size", "4", "--traits", "2", "--no-progress", "--parquet")
    assert local.returncode == 0, local.stderr
    distributed = run_cli("promptcam-run", "--model", model, folder, "--out", tmp_path / "ray", "--engine", "ort-cpu",
                          "--batch-size", "4", "--traits", "2", "--ray", "--ray-actors", "2", "--parquet",
                          env={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}, timeout=600)
    assert distributed.returncode == 0, distributed.stderr[-4000:]
    assert "15 classified, 2 failed, 1 non-image file(s) skipped" in distributed.stdout

    def content(path):
        data = json.loads(path.read_text())
        data["info"].pop("classification_completion_time")
        data["info"].pop("classifier_metadata")
        return data

    assert content(tmp_path / "ray" / "results.json") == content(tmp_path / "local" / "results.json")
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "ray" / "results.parquet").equals(pq.read_table(tmp_path / "local" /
                                                                                   "results.parquet"))
    failures = [im for im in json.loads((tmp_path / "ray" / "results.json").read_text())["images"] if "failure" in im]
    assert sorted(im["file"] for im in failures) == ["broken.jpg", "empty.png"]


def test_core_runtime_does_not_import_ray(tiny_export) -> None:
    import subprocess

    code = ("import sys; import promptcam.runtime, promptcam.batch.run, promptcam.cli.run; "
            "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False"
