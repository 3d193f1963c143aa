"""``promptcam-review export`` and the command line (the installed scripts, real files)."""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import HOSTILE_CLASS

from helpers import run_cli
from promptcam.review.index import build_index, locate
from promptcam.review.query import Filters, ReviewStore


def review(results: Path, picks: dict[int, str]) -> ReviewStore:
    """Review items by position among the classified ones: position -> label ('' = the prediction)."""
    source = locate(results)
    build_index(source)
    store = ReviewStore(source.review_db)
    items = store.page(Filters(status="ok")).items
    for position, label in picks.items():
        store.review(items[position], label or items[position]["top1"])
    return store


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_writes_csv_and_an_imagefolder_tree(results_copy: Path, tmp_path: Path) -> None:
    store = review(results_copy, {0: "", 1: "class_004", 2: "class_004"})
    items = {i["id"]: i for i in store.page(Filters(status="ok")).items}
    out = tmp_path / "export"
    result = run_cli("promptcam-review", "export", results_copy, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "3 reviewed (2 corrected)" in result.stdout
    rows = read_csv(out / "corrections.csv")
    assert [r["verdict"] for r in rows] == ["confirmed", "corrected", "corrected"]
    for row in rows:
        item = items[int(row["id"])]
        exported = out / row["exported_as"]
        assert row["label"] == (item["top1"] if row["verdict"] == "confirmed" else "class_004")
        assert exported.parent.name == f"{store.class_index(row['label']):03d}.{row['label']}"
        assert os.path.samefile(exported, item["image"]) or exported.read_bytes() == Path(item["image"]).read_bytes()
    # promptcam-train reads the tree as ImageFolder, with the model's class names back
    from promptcam.train.data import find_classes, list_samples

    folders = find_classes(out / "images")
    assert sorted(name for _, name in folders) == sorted({r["label"].replace("_", " ") for r in rows})
    assert {folder for folder, _ in folders} == {Path(r["exported_as"]).parent.name for r in rows}
    assert len(list_samples(out / "images", [f for f, _ in folders])) == 3

    # a second export after a change replaces the tree (no stale copy under the old class)
    store.unreview(items[int(rows[1]["id"])])
    assert run_cli("promptcam-review", "export", results_copy, "--out", out).returncode == 0
    assert len(read_csv(out / "corrections.csv")) == 2
    assert len([p for p in (out / "images").rglob("*.jpg")]) == 2


def test_export_refuses_a_folder_it_did_not_write_and_lists_missing_photos(station_db: Path, tmp_path: Path) -> None:
    store = review(station_db, {0: HOSTILE_CLASS, 1: ""})
    missing = store.page(Filters(status="ok")).items[1]
    Path(missing["image"]).unlink()
    out = tmp_path / "export"
    (out / "images").mkdir(parents=True)
    result = run_cli("promptcam-review", "export", station_db, "--out", out)
    assert result.returncode == 1 and "was not written by promptcam-review export" in result.stderr
    (out / "images").rmdir()
    result = run_cli("promptcam-review", "export", station_db, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "photo not found on disk" in result.stderr and "1 missing on disk" in result.stdout
    rows = read_csv(out / "corrections.csv")
    assert [r["exported_as"] == "" for r in rows] == [False, True]
    hostile = out / rows[0]["exported_as"]
    # a class name with '/' and markup is one folder inside the tree, never a path out of it
    assert hostile.is_file() and hostile.parent.parent == out / "images" and "/" not in hostile.parent.name


@pytest.mark.parametrize(("args", "words"), [
    (["/no/such/results"], "results not found"),
    (["export", "/no/such/results", "--out", "x"], "results not found"),
])
def test_cli_errors_are_one_line(args: list[str], words: str) -> None:
    result = run_cli("promptcam-review", *args)
    assert result.returncode == 1 and "error: " in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_what_is_not_results(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli("promptcam-review", tmp_path / "notes.txt")
    assert result.returncode == 1 and "not a SQLite database" in result.stderr
    result = run_cli("promptcam-review", tmp_path)
    assert result.returncode == 1 and "no results.jsonl here" in result.stderr
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    result = run_cli("promptcam-review", other)
    assert result.returncode == 1 and "not a promptcam-watch results database" in result.stderr
    assert run_cli("promptcam", "review", "--help").returncode == 0
    assert "export" in run_cli("promptcam-review", "--help").stdout
