"""promptcam-run on the hostile corpus: exit 0, every input once, nothing written outside its folders,
bounded memory, identical on --resume; run identity, the lock on --out, paths that try to escape."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_corpus import make_hostile_corpus

from promptcam.batch.inputs import collect_inputs, root_labels
from promptcam.runtime.records import NAME_MAX, heatmap_paths

ADDRESS_SPACE_LIMIT = 4 * 2**30  # a decoded 30000x30000 bomb alone is 2.7 GB; the run must stay far below


def promptcam_run(*args: object, cwd: Path | None = None, limit: int | None = ADDRESS_SPACE_LIMIT,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """The real ``promptcam-run`` entry point, under an address-space limit."""

    def limit_memory() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    exe = Path(sys.executable).parent / "promptcam-run"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          preexec_fn=limit_memory, errors="backslashreplace")


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every object under ``root`` (links not followed): path -> (size, mtime_ns)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
    return found


def comparable(results: Path) -> dict:
    data = json.loads((results / "results.json").read_text())
    data["info"].pop("classification_completion_time")
    return data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return make_hostile_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def hostile_run(tiny_export, corpus, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("hostile_run")
    before = tree(corpus["root"])
    args = ["--model", tiny_export, *corpus["inputs"], "--out", work / "out", "--heatmaps", work / "heat",
            "--traits", "2", "--batch-size", "8", "--no-progress", "--parquet"]
    result = promptcam_run(*args)
    return {"work": work, "result": result, "before": before, "after": tree(corpus["root"]), "args": args}


def test_corpus_generator_covers_the_issue(corpus) -> None:
    assert corpus["count"] >= 200
    kinds = {e["kind"] for e in corpus["entries"]}
    assert {"truncated", "bitflip", "zero_tail", "zero_byte", "bomb", "mode", "orientation", "broken_exif",
            "hostile_date", "name", "same_name", "symlink_loop", "self_loop", "dangling", "fifo", "dir_loop"} <= kinds
    assert "/abs/dir 00:00:00" in corpus["exif_dates"].values()
    assert len(os.fsencode(corpus["names"]["long_255"].name)) == 255
    assert all(p.exists() or p.is_symlink() for p in (e["path"] for e in corpus["entries"]))


def test_hostile_corpus_run(hostile_run, corpus) -> None:
    result = hostile_run["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    out, heat = hostile_run["work"] / "out", hostile_run["work"] / "heat"
    data = json.loads((out / "results.json").read_text())
    journal = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    files = [im["file"] for im in data["images"]]
    assert len(files) == len(set(files)) == len(journal)

    # every image input exactly once, as its canonical path; the expected ones classified or failed
    by_key = {r["path"]: r for r in journal}
    assert len(by_key) == len(journal)
    # a link leading out of the input folders (fs/dev_zero.jpg -> /dev/zero) is refused and named in the log
    roots = [os.path.realpath(r) for r in corpus["inputs"]]
    out_links = [e["path"] for e in corpus["entries"] if e["path"].is_symlink()
                 and not any(os.path.commonpath([os.path.realpath(e["path"]), r]) == r for r in roots)]
    assert out_links and all(str(p) in result.stderr for p in out_links)
    expected = {os.path.realpath(e["path"]): e for e in corpus["entries"]
                if e["expect"] in ("ok", "failure", "either") and e["path"] not in out_links}
    assert set(by_key) == set(expected)
    assert all(os.path.realpath(p) in by_key for p in corpus["aliases"])
    wrong = {ascii(str(e["path"])): by_key[key].get("failure") for key, e in expected.items()
             if (e["expect"] == "ok") != ("failure" not in by_key[key]) and e["expect"] != "either"}
    assert not wrong
    for bomb in corpus["bombs"]:  # refused from the header, never decoded (under the address-space limit)
        assert "pixels is above the 250000000 limit" in by_key[os.path.realpath(bomb)]["failure"], bomb
    n_ok = sum("failure" not in r for r in journal)
    assert f"{n_ok} classified, {len(journal) - n_ok} failed, {len(corpus['non_images'])} non-image" in result.stdout

    # the same relative name under two roots: told apart by the root's name
    same = sorted(im for im in files if im.endswith("/IMG_0001.JPG"))
    assert same == ["cam01/IMG_0001.JPG", "cam02/IMG_0001.JPG", "site1/DCIM/IMG_0001.JPG", "site2/DCIM/IMG_0001.JPG"]

    # heatmaps: one per classified image, all distinct, all inside --heatmaps, names within 255 bytes
    heatmaps = [im["promptcam"]["heatmap"] for im in data["images"] if "failure" not in im]
    assert len(heatmaps) == len(set(heatmaps)) == n_ok
    for path in heatmaps:
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(heat.resolve())
        assert len(os.fsencode(Path(path).name)) <= NAME_MAX
    names = {im["file"]: im for im in data["images"]}
    cam_jpg, cam_png = names["corpus/names/cam.jpg"], names["corpus/names/cam.png"]
    assert cam_jpg["promptcam"]["heatmap"] != cam_png["promptcam"]["heatmap"]

    # nothing under the inputs changed; everything new is under --out or --heatmaps
    assert hostile_run["after"] == hostile_run["before"]
    work_tree = tree(hostile_run["work"])
    assert all(Path(p).is_relative_to(out) or Path(p).is_relative_to(heat) for p in work_tree)
    assert not [p for p in work_tree if p.endswith(".tmp") or ".tmp-" in p]

    # CSV: valid UTF-8, one row per image, formula starts escaped, non-UTF-8 names escaped
    rows = list(csv.DictReader(open(out / "results.csv", encoding="utf-8", newline="")))
    assert len(rows) == len(journal)
    csv_files = {r["file"] for r in rows}
    assert "'corpus/names/=cmd.jpg" not in csv_files  # prefixed with the root's name: not a formula start
    assert all(not f.startswith(("=", "+", "-", "@", "\t", "\r")) for f in csv_files)
    assert any("\\udce9" in f for f in csv_files)
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").num_rows == len(journal)


def test_hostile_corpus_resume_is_identical(hostile_run, corpus) -> None:
    out = hostile_run["work"] / "out"
    first = comparable(out)
    first_csv = (out / "results.csv").read_bytes()
    result = promptcam_run(*hostile_run["args"], "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming: {len(first['images'])} of {len(first['images'])} images already done" in result.stderr
    assert comparable(out) == first
    assert (out / "results.csv").read_bytes() == first_csv


def test_single_root_formula_names_are_escaped(tiny_export, corpus, tmp_path) -> None:
    names = corpus["root"] / "corpus" / "names"
    result = promptcam_run("--model", tiny_export, names, "--out", tmp_path / "out", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    cells = {r["file"] for r in csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8"))}
    assert {"'=cmd.jpg", "'-rf.jpg", "'+1.jpg", "'@SUM(1).jpg", "'\tx.jpg", "'=HYPERLINK(1).jpg"} <= cells
    files = {im["file"] for im in json.loads((tmp_path / "out" / "results.json").read_text())["images"]}
    assert "=cmd.jpg" in files and "caf\udce9.jpg" in files  # JSON keeps the exact (surrogate-escaped) name


def test_dotdot_never_escapes_heatmaps(tiny_export, corpus, tmp_path) -> None:
    names = corpus["root"] / "corpus" / "names"
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    listing = work / "list.txt"
    listing.write_text(f"{os.path.relpath(names / 'cam.jpg', work)}\n{names / 'cam.png'}\n")  # ../../.. and absolute
    rel = os.path.relpath(names / "UPPER.JPG", work)
    before = tree(tmp_path)
    result = promptcam_run("--model", tiny_export, listing, rel, "--out", "out", "--heatmaps", "heat",
                           "--no-progress", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((work / "out" / "results.json").read_text())
    assert len(data["images"]) == 3 and all("failure" not in im for im in data["images"])
    for image in data["images"]:
        assert (work / image["promptcam"]["heatmap"]).resolve().is_relative_to((work / "heat").resolve())
    new = set(tree(tmp_path)) - set(before)
    assert all(Path(p).is_relative_to(work / "out") or Path(p).is_relative_to(work / "heat") for p in new)


def test_heatmap_paths_stay_inside_and_distinct(tmp_path) -> None:
    heat = tmp_path / "heat"
    for name in ("../../etc/x.jpg", "/abs/x.jpg", "a/./../../b.jpg", "..", "", "a\\..\\..\\c.jpg"):
        for path in heatmap_paths(heat, name):
            assert os.path.normpath(path).startswith(str(heat) + os.sep), (name, path)
    assert heatmap_paths(heat, "cam.jpg")[0] != heatmap_paths(heat, "cam.png")[0]
    assert heatmap_paths(heat, "../x.jpg")[0] != heatmap_paths(heat, "x.jpg")[0]
    long = "é" * 126 + ".jpg"
    for path in heatmap_paths(heat, long) + heatmap_paths(heat, "x" * 251 + ".jpg"):
        assert len(os.fsencode(path.name)) <= NAME_MAX and path.name.endswith((".heatmap.jpg", ".traits.jpg"))
    assert heatmap_paths(heat, "y" * 251 + ".jpg")[0] != heatmap_paths(heat, "y" * 250 + "z.jpg")[0]


def test_root_labels_tell_roots_apart(tmp_path) -> None:
    roots = [tmp_path / "site1" / "DCIM", tmp_path / "site2" / "DCIM", tmp_path / "cam01", tmp_path / "cam01"]
    assert root_labels(roots) == ["site1/DCIM", "site2/DCIM", "cam01", "cam01~2"]


def test_symlink_loops_are_collected_not_fatal(tmp_path) -> None:
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    (tmp_path / "self.jpg").symlink_to("self.jpg")
    files, skipped, _, _ = collect_inputs([tmp_path])
    assert sorted(f.name for f in files) == ["a.jpg", "b.jpg", "self.jpg"] and not skipped
    assert all(f.size is None for f in files)


def test_run_identity_lock_and_replaced_files(tiny_export, tmp_path) -> None:
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(images / f"img_{i}.jpg"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = tmp_path / "out"
    base = ["--model", tiny_export, "--out", out, "--no-progress", "--batch-size", "2"]
    assert promptcam_run(images, *base).returncode == 0
    identity = json.loads((out / "run.json").read_text())
    assert len(identity["model_sha256"]) == 64 and identity["inputs"] == [str(images.resolve())]

    # another --top-k, --traits, --class or input root: a clear error, unless --overwrite
    for extra in (["--top-k", "2"], ["--traits", "1"], ["--class", "class_001"]):
        result = promptcam_run(images, *base, "--resume", *extra)
        assert result.returncode == 1 and "holds another run" in result.stderr and "--overwrite" in result.stderr
    assert promptcam_run(images / "img_0.jpg", *base, "--resume").returncode == 1

    # the same root spelled relatively: everything already done
    result = promptcam_run(os.path.relpath(images), *base, "--resume")
    assert result.returncode == 0 and "resuming: 5 of 5" in result.stderr, result.stderr

    # a file replaced under the same name is classified again
    cv2.imwrite(str(images / "img_3.jpg"), rng.integers(0, 256, (60, 30, 3), dtype=np.uint8))
    os.utime(images / "img_3.jpg", ns=(1, 1))
    result = promptcam_run(images, *base, "--resume")
    assert result.returncode == 0 and "resuming: 3 of 5" in result.stderr, result.stderr  # its chunk of 2 is redone
    by_file = {im["file"]: im for im in json.loads((out / "results.json").read_text())["images"]}
    journal = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(by_file) == 5 and journal["img_3.jpg"]["mtime_ns"] == 1 and journal["img_3.jpg"]["height"] == 60

    # a second run on the same --out refuses while the first holds the lock
    with open(out / ".promptcam-run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = promptcam_run(images, *base, "--overwrite")
    assert result.returncode == 1 and "another promptcam-run is writing here" in result.stderr

    # --ray never truncates an earlier run's journal without --overwrite
    journal_before = (out / "results.jsonl").read_bytes()
    result = promptcam_run(images, *base, "--ray", limit=None)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert (out / "results.jsonl").read_bytes() == journal_before
