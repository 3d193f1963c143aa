"""The one result record and the one writer: every format, from a file run's records or from SQLite."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from helpers import run_cli
from promptcam.results.formats import class_names_seen, write_outputs
from promptcam.results.journal import Journal
from promptcam.results.store import ResultStore, record_from_row
from promptcam.runtime.records import ImageRecord

TOP = [{"index": 2, "name": "=cmd", "probability": 0.7}, {"index": 0, "name": "fox", "probability": 0.2}]


def records() -> list[ImageRecord]:
    return [
        ImageRecord(file="cam01/a.jpg", path="/x/cam01/a.jpg", width=4, height=3, top_k=TOP, explained_class="=cmd",
                    trait_heads=[1, 0], heatmap="/h/a.jpg.heatmap.jpg"),
        ImageRecord(file="caf\udce9.jpg", path="/x/caf\udce9.jpg", failure="caf\udce9.jpg: zero-byte file"),
        ImageRecord(file="-rf.jpg", path="/x/-rf.jpg", top_k=TOP[::-1], explained_class="fox"),
    ]


def test_every_format_from_one_writer(tmp_path) -> None:
    written = write_outputs(records(), tmp_path, ["fox", "owl", "=cmd"], ["megadetector", "csv", "jsonl", "parquet"],
                            {"k": 1})
    assert set(written) == {"megadetector", "csv", "jsonl", "parquet"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["classification_categories"] == {"0": "fox", "1": "owl", "2": "=cmd"}
    assert [im["file"] for im in data["images"]] == ["cam01/a.jpg", "caf\udce9.jpg", "-rf.jpg"]  # lossless
    assert data["images"][0]["promptcam"] == {"heatmap": "/h/a.jpg.heatmap.jpg", "trait_heads": [1, 0],
                                              "explained_class": "=cmd"}
    rows = list(csv.reader(open(tmp_path / "results.csv", encoding="utf-8", newline="")))
    assert rows[1][:3] == ["cam01/a.jpg", "ok", "'=cmd"] and rows[2][0] == "caf\\udce9.jpg"
    assert rows[3][0] == "'-rf.jpg" and rows[1][4].startswith("'=cmd:")
    back = [ImageRecord.from_dict(json.loads(line)) for line in open(tmp_path / "results.jsonl")]
    assert back == records()
    assert pq.read_table(tmp_path / "results.parquet").column("file").to_pylist()[1] == "caf\\udce9.jpg"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_sqlite_rows_convert_in_one_place(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    station = records_station()
    store.add(station)
    got = list(store.records())
    store.close()
    assert [r.file for r in got] == [r.file for r in station]  # the non-UTF-8 name comes back exact
    assert got[0].top_k == TOP and got[0].trait_heads == [1, 0] and got[1].failure and got[0].processed_at
    assert class_names_seen(got) == ["fox", "class_001", "=cmd"]
    assert record_from_row(next(ResultStore(tmp_path / "r.sqlite").rows())).sha256 == "0" * 64


def records_station() -> list[ImageRecord]:
    out = records()
    for r in out:
        r.source, r.sha256, r.size = "/inbox", "0" * 64, 10
    return out


@pytest.mark.parametrize("fmt", ["megadetector", "csv", "jsonl", "parquet"])
def test_export_results_writes_what_write_outputs_writes(tmp_path, fmt: str) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    store.add(records_station())
    expected = list(store.records())
    store.close()
    result = run_cli("promptcam-export-results", tmp_path / "r.sqlite", "--format", fmt, "-o", tmp_path / "out.x")
    assert result.returncode == 0, result.stderr
    write_outputs(expected, tmp_path / "direct", class_names_seen(expected), [fmt], {"database": str(tmp_path /
                                                                                                     "r.sqlite")})
    direct = next((tmp_path / "direct").iterdir())
    if fmt == "megadetector":
        a, b = json.loads((tmp_path / "out.x").read_text()), json.loads(direct.read_text())
        for data in (a, b):
            data["info"].pop("classification_completion_time")
        assert a == b and a["classification_categories"]["2"] == "=cmd"
    elif fmt == "parquet":
        assert pq.read_table(tmp_path / "out.x").equals(pq.read_table(direct))
    else:
        assert (tmp_path / "out.x").read_bytes() == direct.read_bytes()


def test_journal_skips_damaged_lines(tmp_path) -> None:
    path = tmp_path / "results.jsonl"
    good = [r.to_json() + "\n" for r in records()]
    path.write_bytes(good[0].encode() + b"\x00" * 50 + b"\n" + b"\xff\xfe garbage\n" + b'{"bogus": 1}\n'
                     + good[2].encode() + good[1].encode()[:20])
    journal = Journal(path)
    assert [r.file for r in journal.read()] == ["cam01/a.jpg", "-rf.jpg"] and journal.bad_lines == 3
