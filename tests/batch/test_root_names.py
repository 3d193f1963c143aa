"""Several input roots holding the same relative names: every record says which root it came from, in
results.json, the CSV, the journal, the heatmap paths and on --resume (issue 28, item 9)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import run_cli
from promptcam.batch.inputs import collect_inputs, root_labels
from promptcam.batch.options import DetectionOptions
from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime import Predictor

IMG = "cam01/IMG_0001.JPG"


def photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (40 + seed % 7, 56, 3), dtype=np.uint8))
    return path


# Each layout builds its folders under ``base`` and returns the inputs as typed from ``base`` (the cwd).


def siblings(base: Path) -> list[str]:
    """a/ and b/ both hold cam01/IMG_0001.JPG, spelled with trailing slashes."""
    photo(base / "a" / IMG, 1)
    photo(base / "b" / IMG, 2)
    return ["a/", "b/"]


def spellings(base: Path) -> list[str]:
    """The same folder name under different parents, absolute vs relative, `.`-paths and a symlinked root."""
    photo(base / "x" / "site" / IMG, 3)
    photo(base / "y" / "site" / IMG, 4)
    photo(base / "real" / IMG, 5)
    (base / "link").symlink_to("real")
    return [str(base / "x" / "site"), "y/site/.", "link"]


def nested_label(base: Path) -> list[str]:
    """Root deep/a/b is labelled a/b once b/ also needs its parent, and a/ holds b/cam01/IMG_0001.JPG itself."""
    photo(base / "a" / "b" / IMG, 6)
    photo(base / "b" / IMG, 7)
    photo(base / "deep" / "a" / "b" / IMG, 8)
    return ["a", "b", "deep/a/b"]


def dcim(base: Path) -> list[str]:
    """site1/ itself is a root, and site1/DCIM and site2/DCIM elsewhere are roots too."""
    photo(base / "x" / "site1" / "DCIM" / "IMG_0001.JPG", 9)
    photo(base / "y" / "site1" / "DCIM" / "IMG_0001.JPG", 10)
    photo(base / "z" / "site2" / "DCIM" / "IMG_0001.JPG", 11)
    return ["x/site1", "y/site1/DCIM", "z/site2/DCIM"]


def single_files(base: Path) -> list[str]:
    """Folder x/b (labelled b) and single files typed as b/cam01/...: the same text, other photos."""
    photo(base / "x" / "b" / IMG, 12)
    photo(base / "b" / IMG, 13)
    photo(base / "b" / "cam01" / "IMG_0002.JPG", 14)
    return ["x/b", f"b/{IMG}", "b/cam01/IMG_0002.JPG"]


def list_file(base: Path) -> list[str]:
    """Folder y/lists (labelled lists) and a list file lists/list.txt whose entries read lists/cam01/..."""
    photo(base / "y" / "lists" / IMG, 15)
    photo(base / "lists" / IMG, 16)
    photo(base / "lists" / "cam01" / "IMG_0003.JPG", 17)
    (base / "lists" / "list.txt").write_text(f"{IMG}\ncam01/IMG_0003.JPG\n")
    return ["y/lists", "lists/list.txt"]


LAYOUTS = [siblings, spellings, nested_label, dcim, single_files, list_file]


@pytest.fixture(scope="module")
def predictor(tiny_export):
    with Predictor(tiny_export, "ort-cpu", batch_size=1) as p:
        yield p


def run(predictor, inputs, out: Path, **kwargs) -> dict:
    run_files(predictor, RunOptions(inputs=[Path(i) for i in inputs], out_dir=out, progress=False, workers=1,
                                    **kwargs), log=lambda _: None)
    return json.loads((out / "results.json").read_text())


def resolves_to(label_map: dict[str, str], name: str) -> list[str]:
    """The canonical files a reported name can mean, read as ``<label>/<path in that folder>``."""
    parts = name.split("/")
    found = []
    for cut in range(1, len(parts)):
        folder = label_map.get("/".join(parts[:cut]))
        if folder is not None:
            found.append(os.path.realpath(os.path.join(folder, *parts[cut:])))
    return found


def check_names_tell_roots_apart(data: dict, journal: list[dict], inputs: list[str]) -> None:
    """Every name in results.json once; each record's name read through the run's folder labels is that record."""
    names = [im["file"] for im in data["images"]]
    assert len(names) == len(set(names)) and len(journal) > 0
    labels = data["info"]["classifier_metadata"]["input_folders"]
    folders = {os.path.realpath(i) for i in inputs if Path(i).is_dir()}
    assert set(labels.values()) == folders
    for record in journal:
        name, key = record["file"], record["path"]
        if any(key.startswith(f + os.sep) for f in folders):
            # a folder's photo: exactly one reading of its name, and it is this photo
            assert resolves_to(labels, name) == [key], (name, key)
        else:
            # a file named on the command line or in a list: its absolute path, never read as a folder's
            assert os.path.isabs(name) and os.path.realpath(name) == key, (name, key)
            assert resolves_to(labels, name) == []


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_every_output_tells_the_roots_apart(predictor, layout, tmp_path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    inputs = layout(work)
    monkeypatch.chdir(work)
    out, heat = tmp_path / "out", tmp_path / "heat"
    data = run(predictor, inputs, out, heatmaps=heat)
    journal = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all("failure" not in r for r in journal) and len(journal) == len(data["images"])
    check_names_tell_roots_apart(data, journal, inputs)

    # CSV: one row per photo under the same names
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8", newline="")))
    assert [r["file"] for r in rows] == [im["file"] for im in data["images"]]

    # heatmaps: one per photo, distinct, inside --heatmaps, under the folder's label
    heatmaps = [im["promptcam"]["heatmap"] for im in data["images"]]
    assert len(set(heatmaps)) == len(heatmaps) and all(Path(h).is_file() for h in heatmaps)
    labels = data["info"]["classifier_metadata"]["input_folders"]
    for im, heatmap in zip(data["images"], heatmaps, strict=True):
        assert Path(heatmap).resolve().is_relative_to(heat.resolve())
        if not os.path.isabs(im["file"]):
            label = next(lab for lab in labels if im["file"].startswith(lab + "/"))
            assert Path(heatmap).is_relative_to(heat / label)

    # --resume: everything done; then one photo replaced: only it is redone, the other roots' records kept
    again = run(predictor, inputs, out, heatmaps=heat, resume=True)
    for d in (data, again):
        d["info"].pop("classification_completion_time")
    assert again == data
    changed = journal[-1]
    photo(Path(changed["path"]), 99)
    os.utime(changed["path"], ns=(1, 1))
    summary = run_files(predictor, RunOptions(inputs=[Path(i) for i in inputs], out_dir=out, progress=False,
                                              heatmaps=heat, resume=True), log=lambda _: None)
    assert summary.resumed == len(journal) - 1
    after = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert after[changed["path"]]["mtime_ns"] == 1 and after[changed["path"]]["file"] == changed["file"]
    assert [after[r["path"]]["top_k"] for r in journal[:-1]] == [r["top_k"] for r in journal[:-1]]


def test_labels_are_prefix_free(tmp_path) -> None:
    # nested: b/ makes deep/a/b grow to a/b, which would read as a/'s subfolder b: it grows on to deep/a/b
    roots = [tmp_path / "a", tmp_path / "b", tmp_path / "deep" / "a" / "b"]
    assert root_labels(roots) == ["a", f"{tmp_path.name}/b", "deep/a/b"]
    roots = [tmp_path / "x" / "site1", tmp_path / "y" / "site1" / "DCIM", tmp_path / "z" / "site2" / "DCIM"]
    assert root_labels(roots) == ["site1", "y/site1/DCIM", "site2/DCIM"]
    # a folder inside another keeps its own name: they share their photos, not names of other photos
    assert root_labels([tmp_path / "a", tmp_path / "a" / "b"]) == ["a", "b"]


def test_collect_inputs_names_are_unambiguous(tmp_path, monkeypatch) -> None:
    for layout in LAYOUTS:
        work = tmp_path / layout.__name__
        work.mkdir()
        inputs = layout(work)
        monkeypatch.chdir(work)
        collected = collect_inputs([Path(i) for i in inputs])
        labels = collected.folders
        for f in collected.files:
            if os.path.isabs(f.name):
                assert resolves_to(labels, f.name) == [] and os.path.realpath(f.name) == f.key
            else:
                assert resolves_to(labels, f.name) == [f.key], (layout.__name__, f.name)


def md_file(path: Path, names: list[str]) -> Path:
    images = [{"file": n, "max_detection_conf": 0.9,
               "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]} for n in names]
    path.write_text(json.dumps({"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
                                "detection_categories": {"1": "animal"}, "images": images}))
    return path


@pytest.mark.parametrize(("entries", "root"), [
    ([IMG, IMG], "a"),  # two per-folder detector files merged: the same name twice
    ([IMG], "a"),  # a's file only
    (["a/" + IMG, "b/" + IMG], None),  # relative to the common parent
    (["{base}/a/" + IMG, "{base}/b/" + IMG], None),  # absolute
])
def test_detections_name_each_root_once(predictor, entries, root, tmp_path, monkeypatch) -> None:
    inputs = siblings(tmp_path)
    monkeypatch.chdir(tmp_path)
    md = md_file(tmp_path / "md.json", [e.format(base=tmp_path) for e in entries])
    detections = DetectionOptions(path=md, root=tmp_path / root if root else None)
    data = run(predictor, inputs, tmp_path / "out", detections=detections, heatmaps=tmp_path / "heat")
    names = [im["file"] for im in data["images"]]
    assert len(names) == len(set(names)), names
    journal = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    check_names_tell_roots_apart(data, journal, inputs)
    by_key = {r["path"]: r for r in journal}
    a, b = (os.path.realpath(tmp_path / r / IMG) for r in "ab")
    assert by_key[a]["file"] == "a/" + IMG and by_key[b]["file"] == "b/" + IMG
    assert "failure" not in by_key[a]
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8", newline="")))
    assert {r["file"] for r in rows} >= {"a/" + IMG, "b/" + IMG}
    validate = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    report = validate.validate_batch_results(str(tmp_path / "out" / "results.json"))["validation_results"]
    assert report["errors"] == []


def test_cli_two_roots_same_relative_name(tiny_export, tmp_path) -> None:
    inputs = [str(tmp_path / i) for i in nested_label(tmp_path)]
    out = tmp_path / "out"
    args = ["--model", tiny_export, *inputs, "--out", out, "--heatmaps", tmp_path / "heat", "--no-progress"]
    result = run_cli("promptcam-run", *args)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    journal = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(im["file"] for im in data["images"]) == ["a/b/" + IMG, "deep/a/b/" + IMG,
                                                           f"{tmp_path.name}/b/" + IMG]
    check_names_tell_roots_apart(data, journal, inputs)
    result = run_cli("promptcam-run", *args, "--resume")
    assert result.returncode == 0 and "resuming: 3 of 3" in result.stderr, result.stderr
