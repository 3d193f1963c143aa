"""Symbolic links in the input folders: followed inside the inputs, refused (never read, in no result) where
they lead out of them, unless --follow-links; link loops end quietly (issue 28, item 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import promptcam.batch.chunks as chunks
from helpers import run_cli
from promptcam.batch.inputs import collect_inputs
from promptcam.batch.run import RunOptions, run_files
from promptcam.core.errors import PromptCamError
from promptcam.runtime import Predictor


def photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (36, 48, 3), dtype=np.uint8))
    return path


def link(path: Path, target: str | Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


@pytest.fixture()
def fs(tmp_path) -> dict:
    """An input folder ``root`` with links in and out, a second input ``root2``, and ``outside`` (not an input)."""
    base = tmp_path / "fs"
    root, root2, root3, outside = base / "root", base / "root2", base / "root3", base / "outside"
    photo(root / "real" / "IMG_0001.JPG", 1)
    photo(root2 / "IMG_0002.JPG", 2)
    photo(root3 / "IMG_0005.JPG", 6)  # an input only in the --follow-links test
    photo(outside / "secret.jpg", 3)
    photo(outside / "dir" / "IMG_0003.JPG", 4)
    photo(outside / "dir" / "sub" / "IMG_0004.JPG", 5)
    link(outside / "dir" / "sub" / "back", "..")  # a loop out there, met only with --follow-links
    inside = {  # followed without --follow-links
        "in_file.jpg": link(root / "in_file.jpg", "real/IMG_0001.JPG"),
        "in_root2.jpg": link(root / "in_root2.jpg", "../root2/IMG_0002.JPG"),  # into the other input
    }
    refused = {
        "out_file.jpg": link(root / "out_file.jpg", "../outside/secret.jpg"),
        "out_abs.jpg": link(root / "deep" / "out_abs.jpg", outside / "secret.jpg"),
        "hop.jpg": link(root / "hop.jpg", "../outside/secret.jpg"),
        "chain.jpg": link(root / "chain.jpg", "hop.jpg"),  # inside, then out
        "dangling_out.jpg": link(root / "dangling_out.jpg", "../outside/nothing.jpg"),
        "out_dir": link(root / "out_dir", "../outside/dir"),
        "up_dir": link(root / "real" / "up_dir", "../../outside"),
        "base_dir": link(root / "real" / "base_dir", "../.."),  # above every input: holds them all
    }
    link(root / "in_dir", "real")  # a folder link inside: its photo is listed once, where it is
    link(root / "real" / "loop_dir", ".")  # loops inside: no hang
    link(root / "real" / "parent_dir", "..")
    loops = [link(root / "loop_a.jpg", "loop_b.jpg"), link(root / "loop_b.jpg", "loop_a.jpg"),
             link(root / "self.jpg", "self.jpg")]
    return {"base": base, "root": root, "root2": root2, "root3": root3, "outside": outside, "inside": inside,
            "refused": refused, "loops": loops}


def test_links_out_of_the_inputs_are_refused(fs) -> None:
    collected = collect_inputs([fs["root"], fs["root2"]])
    assert sorted(map(str, collected.refused_links)) == sorted(str(p) for p in fs["refused"].values())
    keys = [f.key for f in collected.files]
    assert not [k for k in keys if k.startswith(str(fs["outside"]))]
    assert len(keys) == len(set(keys))
    names = {f.name for f in collected.files}
    # in: the photo once (the link sorts before real/); into the other input: once; loops: listed, their read fails
    assert {"root/in_file.jpg", "root/in_root2.jpg", "root/loop_a.jpg", "root/loop_b.jpg", "root/self.jpg"} <= names
    assert not [n for n in names if "in_dir/" in n or "loop_dir" in n or "parent_dir" in n]
    assert len(collected.files) == 5  # IMG_0001 (as in_file.jpg), IMG_0002 (as in_root2.jpg), three loops

    # without root2 as an input, the link into it leads out
    alone = collect_inputs([fs["root"]])
    assert fs["inside"]["in_root2.jpg"] in alone.refused_links
    # a file named on the command line is an input: a link to it stays inside
    named = collect_inputs([fs["root"], fs["outside"] / "secret.jpg"])
    assert fs["refused"]["out_file.jpg"] not in named.refused_links
    assert any(f.key == str(fs["outside"] / "secret.jpg") for f in named.files)


def test_follow_links_reads_them_once_and_ends_loops(fs) -> None:
    collected = collect_inputs([fs["root"], fs["root2"], fs["root3"]], follow_links=True)
    assert collected.refused_links == []
    by_key = {f.key: f.name for f in collected.files}
    assert len(by_key) == len(collected.files)
    out = fs["outside"]
    # named by the link that reached them, keyed (resume) by the file they are
    assert by_key[str(out / "secret.jpg")] == "root/chain.jpg"
    assert by_key[str(out / "dir" / "IMG_0003.JPG")] == "root/out_dir/IMG_0003.JPG"
    assert by_key[str(out / "dir" / "sub" / "IMG_0004.JPG")] == "root/out_dir/sub/IMG_0004.JPG"
    assert str(out / "nothing.jpg") in by_key  # dangling: a failure record when read
    # base_dir leads above every input: past it, the inputs are left to their own walk and names
    assert by_key[str(fs["root3"] / "IMG_0005.JPG")] == "root3/IMG_0005.JPG"
    assert not [n for n in by_key.values() if "base_dir" in n or "up_dir" in n]
    assert len(collected.files) == 10


@pytest.fixture(scope="module")
def predictor(tiny_export):
    with Predictor(tiny_export, "ort-cpu", batch_size=2) as p:
        yield p


def test_run_never_reads_a_link_out(predictor, fs, tmp_path, monkeypatch) -> None:
    read: list[str] = []
    original = chunks.read_file_bytes

    def spy(path):  # noqa: ANN001, ANN202
        read.append(os.path.realpath(path))
        return original(path)

    monkeypatch.setattr(chunks, "read_file_bytes", spy)
    logs: list[str] = []
    out = tmp_path / "out"
    options = RunOptions(inputs=[fs["root"], fs["root2"]], out_dir=out, progress=False, heatmaps=tmp_path / "heat")
    summary = run_files(predictor, options, log=logs.append)
    assert read and not [p for p in read if p.startswith(str(fs["outside"]))]
    assert summary.refused_links == len(fs["refused"]) and summary.total == 5
    assert summary.ok == 2 and summary.failed == 3  # the two photos; the three loops
    text = "".join(p.read_text(errors="replace") for p in out.iterdir() if p.name.startswith("results."))
    assert str(fs["outside"]) not in text and "secret" not in text and "out_file" not in text
    assert any("lead out of the input folders" in m for m in logs)
    assert any(str(fs["refused"]["out_file.jpg"]) in m for m in logs)
    data = json.loads((out / "results.json").read_text())
    assert data["info"]["classifier_metadata"]["links_refused"] == len(fs["refused"])
    loop_failures = [im["failure"] for im in data["images"] if "loop" in im["file"] or "self" in im["file"]]
    assert len(loop_failures) == 3 and all("cannot read file" in f for f in loop_failures)

    # --follow-links: the links out are read, named by the link; another run, so --resume refuses to mix them
    read.clear()
    options.resume, options.follow_links = True, True
    with pytest.raises(PromptCamError, match="follow_links"):
        run_files(predictor, options, log=logs.append)
    options.resume, options.overwrite = False, True
    summary = run_files(predictor, options, log=logs.append)
    # + secret, nothing.jpg, IMG_0003, IMG_0004 and, through base_dir, root3/IMG_0005 (not an input here)
    assert summary.refused_links == 0 and summary.total == 10
    assert summary.ok == 6 and summary.failed == 4
    assert str(fs["outside"] / "secret.jpg") in read
    names = {im["file"] for im in json.loads((out / "results.json").read_text())["images"]}
    assert {"root/chain.jpg", "root/out_dir/IMG_0003.JPG", "root/out_dir/sub/IMG_0004.JPG",
            "root/real/base_dir/root3/IMG_0005.JPG"} <= names
    options.overwrite, options.resume = False, True
    again = run_files(predictor, options, log=logs.append)
    assert again.resumed == again.total


def test_cli_follow_links_option(tiny_export, fs, tmp_path) -> None:
    base = ["--model", tiny_export, fs["root"], "--no-progress"]
    result = run_cli("promptcam-run", *base, "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert "lead out of the input folders" in result.stderr and str(fs["refused"]["out_file.jpg"]) in result.stderr
    assert "link(s) leading out of the input folders refused" in result.stdout
    files = {im["file"] for im in json.loads((tmp_path / "a" / "results.json").read_text())["images"]}
    assert "out_file.jpg" not in files and "in_file.jpg" in files
    result = run_cli("promptcam-run", *base, "--out", tmp_path / "b", "--follow-links")
    assert result.returncode == 0, result.stderr
    files = {im["file"] for im in json.loads((tmp_path / "b" / "results.json").read_text())["images"]}
    assert {"chain.jpg", "out_dir/IMG_0003.JPG", "in_root2.jpg"} <= files
    help_text = run_cli("promptcam-run", "--help").stdout
    files_group = help_text[help_text.index("Files mode"):help_text.index("Stream mode")]
    assert "--follow-links" in files_group
    result = run_cli("promptcam-run", "--model", tiny_export, "--source", "0", "--follow-links")
    assert result.returncode == 1 and "--follow-links cannot be used in --source mode" in result.stderr
