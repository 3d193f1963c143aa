"""The review on every kind of result store, built from real records without a model: a run folder
(whole-image and ``--detections``), a ``promptcam watch`` database (whole-image and ``--detections
sidecar``); hostile JSON in those stores; a station database that grows while the page is open."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import write_jpeg

from promptcam.results.formats import OUTPUT_NAMES, megadetector_json, write_jsonl
from promptcam.results.megadetector import MEGADETECTOR_CATEGORIES
from promptcam.results.store import ResultStore
from promptcam.review.app import create_app
from promptcam.review.index import build_index, locate
from promptcam.runtime.records import ImageRecord

pytest.importorskip("httpx", reason="starlette's test client needs httpx (the dev extra)")
from starlette.testclient import TestClient  # noqa: E402

CLASSES = ["fox", "deer", "badger"]
KINDS = ["run folder", "run folder with detections", "watch database", "watch database with detections"]


def top(*pairs: tuple[int, float]) -> list[dict]:
    return [{"index": i, "name": CLASSES[i], "probability": p} for i, p in pairs]


def detection(category: str, conf: float, bbox: list[float], *classified: tuple[int, float]) -> dict:
    found = {"category": category, "conf": conf, "bbox": bbox}
    if classified:  # as the runtime writes them: [[class id (text), probability], ...]
        found["classifications"] = [[str(i), p] for i, p in classified]
    return found


# what each photo holds: the whole-image top-k, and the detector's detections classified crop by crop
PHOTOS = {
    "a.jpg": (top((0, 0.9), (1, 0.1)), [detection("1", 0.95, [0.1, 0.2, 0.3, 0.4], (0, 0.9), (1, 0.1)),
                                        detection("2", 0.8, [0.6, 0.1, 0.2, 0.5])]),  # a person: not classified
    "b.jpg": (top((1, 0.7), (0, 0.3)), [detection("1", 0.15, [0.7, 0.7, 0.1, 0.1]),  # below the crop threshold
                                        detection("1", 0.6, [0.2, 0.2, 0.4, 0.4], (1, 0.7), (0, 0.3))]),
    "c.jpg": (top((2, 0.5), (1, 0.3)), []),  # the detector found nothing
}
EXPECTED_TOP1 = {"a.jpg": "fox", "b.jpg": "deer"}


def photo_records(folder: Path, *, detections: bool, station: bool) -> list[ImageRecord]:
    records = []
    for seed, (name, (top_k, found)) in enumerate(PHOTOS.items()):
        path = write_jpeg(folder / "cam" / name, seed)
        record = ImageRecord(file=f"cam/{name}", width=128, height=96,
                             top_k=[] if detections else top_k, detections=found if detections else None)
        if station:
            record.source, record.sha256, record.size = str(folder), f"{seed}" * 64, path.stat().st_size
            record.taken_at = f"2024-05-0{seed + 1}T10:00:00Z"
        else:
            record.path = str(path)
        records.append(record)
    return records


def run_folder_of(root: Path, *, detections: bool) -> Path:
    """A ``promptcam run`` output folder as the run writes it: the JSONL journal and results.json."""
    records = photo_records(root / "photos", detections=detections, station=False)
    out = root / "out"
    out.mkdir()
    write_jsonl(out / OUTPUT_NAMES["jsonl"], records)
    detector = {"detection_categories": dict(MEGADETECTOR_CATEGORIES), "info": {}} if detections else None
    document = megadetector_json(records, CLASSES, {}, detector=detector)
    (out / OUTPUT_NAMES["megadetector"]).write_text(json.dumps(document), encoding="utf-8")
    return out


def watch_database_of(root: Path, *, detections: bool) -> Path:
    """A ``promptcam watch`` database (``--detections sidecar``: per-crop classes and the class list in meta)."""
    store = ResultStore(root / "station" / "results.sqlite")
    try:
        if detections:  # what the watcher writes before its first row
            store.set_meta("class_names", json.dumps(CLASSES))
            store.set_meta("detection_categories", json.dumps(MEGADETECTOR_CATEGORIES, sort_keys=True))
        assert store.add(photo_records(root / "inbox", detections=detections, station=True)) == len(PHOTOS)
    finally:
        store.close()
    return store.path


def results_of_kind(kind: str, root: Path) -> Path:
    detections = kind.endswith("with detections")
    return (run_folder_of if kind.startswith("run") else watch_database_of)(root, detections=detections)


def client_for(results: Path, **kwargs) -> TestClient:
    source = locate(results)
    build_index(source)
    return TestClient(create_app(source, **kwargs), raise_server_exceptions=False)


def card_ids(html: str) -> dict[str, int]:
    """file -> item id of the grid's cards."""
    cards = re.findall(r'data-id="(\d+)">\s*<div class="thumb"><img loading="lazy" src="[^"]*" alt="([^"]*)"', html)
    return {name: int(i) for i, name in cards}


def page_data(html: str) -> dict:
    return json.loads(re.search(r'<script id="page-data" type="application/json">(.*?)</script>', html, re.S)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_review_works_on_every_kind_of_result_store(kind: str, tmp_path: Path) -> None:
    client = client_for(results_of_kind(kind, tmp_path))
    detections = kind.endswith("with detections")
    ids = card_ids(client.get("/").text)
    assert sorted(ids) == ["cam/a.jpg", "cam/b.jpg", "cam/c.jpg"]
    assert client.app.state.review.store.classes() == CLASSES  # corrections can name any of the model's classes

    for name, top1 in EXPECTED_TOP1.items():
        html = client.get(f"/item/{ids[f'cam/{name}']}").text
        assert re.search(r'<span id="predicted">([^<]*)</span>', html)[1] == top1, (kind, name)
        data = page_data(html)
        assert data["predicted"] == top1 and data["classes"] == CLASSES
        wanted = [d["bbox"] for d in PHOTOS[name][1]] if detections else []
        assert data["boxes"] == wanted
        assert (f"{len(wanted)} detections" in html) == detections
    if detections:
        first = client.get(f"/item/{ids['cam/a.jpg']}").text
        assert "fox 90.0%" in first and "category 2 · conf 0.80" in first
        assert sorted(card_ids(client.get("/", params={"crops": "yes"}).text)) == ["cam/a.jpg", "cam/b.jpg"]
        assert sorted(card_ids(client.get("/", params={"crops": "no"}).text)) == ["cam/c.jpg"]
    else:
        assert card_ids(client.get("/", params={"crops": "yes"}).text) == {}
    assert sorted(card_ids(client.get("/", params={"cls": "fox"}).text)) == ["cam/a.jpg"]

    answer = client.post(f"/api/review/{ids['cam/a.jpg']}", json={"label": "deer"})
    assert answer.status_code == 200 and answer.json()["verdict"] == "corrected", answer.text
    answer = client.post(f"/api/review/{ids['cam/b.jpg']}", json={"label": "deer"})
    assert answer.status_code == 200 and answer.json()["verdict"] == "confirmed", answer.text


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("field", ["detections", "top_k", "trait_heads", "probabilities"])
@pytest.mark.parametrize("text", [deep(100_000), "{not json", '"a string"', '[1, {"bbox": "x"}, ["deep", ' +
                                  deep(950) + "]]", "[" + '{"bbox": [0, 0, 1, 1e999]},' * 3 + "{}]"])
def test_hostile_json_in_a_station_database_is_one_clean_error(field: str, text: str, tmp_path: Path) -> None:
    db = watch_database_of(tmp_path, detections=True)
    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE results SET {field} = ? WHERE file = 'cam/b.jpg'", (text,))
    client = client_for(db)
    ids = card_ids(client.get("/").text)
    assert sorted(ids) == ["cam/a.jpg", "cam/b.jpg", "cam/c.jpg"]  # the other rows are untouched
    for name, item_id in ids.items():
        answer = client.get(f"/item/{item_id}")
        assert answer.status_code == 200 and "Traceback" not in answer.text, (name, answer.text[-500:])
    assert client.get(f"/item/{ids['cam/a.jpg']}").text.count('<span id="predicted">fox</span>') == 1
    assert client.post(f"/api/review/{ids['cam/a.jpg']}", json={"label": "deer"}).status_code == 200


@pytest.mark.parametrize("text", [deep(100_000), "{not json", '"fox"', "[1, 2]", "[]"])
def test_unreadable_class_names_in_a_station_database(text: str, tmp_path: Path) -> None:
    """The watcher's class list damaged: the crops' classes are named by number, and still reviewable."""
    db = watch_database_of(tmp_path, detections=True)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'class_names'", (text,))
    client = client_for(db)
    ids = card_ids(client.get("/").text)
    assert '<span id="predicted">class_000</span>' in client.get(f"/item/{ids['cam/a.jpg']}").text
    assert client.app.state.review.store.classes() == ["class_000", "class_001"]
    assert client.post(f"/api/review/{ids['cam/a.jpg']}", json={"label": "class_001"}).status_code == 200


def test_hostile_lines_in_a_run_journal_are_clean_failures(tmp_path: Path) -> None:
    folder = run_folder_of(tmp_path, detections=False)
    with open(folder / OUTPUT_NAMES["jsonl"], "a", encoding="utf-8") as fh:
        fh.write('{"file": "cam/deep.jpg", "top_k": ' + deep(100_000) + "}\n")  # skipped, as a torn line
        fh.write('{"file": "cam/deeper.jpg", "detections": [' + deep(500) + "]}\n")
        fh.write('{"file": "cam/shape.jpg", "top_k": "a string"}\n')
        fh.write('{"file": "cam/boxes.jpg", "detections": {"bbox": 1}, "trait_heads": [[1]]}\n')
    client = client_for(folder)
    ids = card_ids(client.get("/").text)
    assert sorted(ids) == ["cam/a.jpg", "cam/b.jpg", "cam/boxes.jpg", "cam/c.jpg", "cam/deeper.jpg", "cam/shape.jpg"]
    for item_id in ids.values():
        assert client.get(f"/item/{item_id}").status_code == 200
    shape = client.get(f"/item/{ids['cam/shape.jpg']}").text
    assert "stored result unreadable (top_k is not a list of classes)" in shape
    assert "stored result unreadable (trait_heads" in client.get(f"/item/{ids['cam/boxes.jpg']}").text
    assert client.get("/", params={"status": "failed"}).text.count('class="card failed') == 2


def test_new_station_rows_show_up_without_a_restart(tmp_path: Path) -> None:
    db = watch_database_of(tmp_path, detections=True)
    client = client_for(db, refresh_seconds=0)
    assert len(card_ids(client.get("/").text)) == 3
    store = ResultStore(db)  # the watcher, still running, commits another photo
    try:
        path = write_jpeg(tmp_path / "inbox" / "cam" / "d.jpg", 7)
        store.add([ImageRecord(file="cam/d.jpg", source=str(tmp_path / "inbox"), sha256="7" * 64,
                               size=path.stat().st_size, top_k=[],
                               detections=[detection("1", 0.9, [0.3, 0.3, 0.2, 0.2], (2, 0.8), (0, 0.2))])])
    finally:
        store.close()
    ids = card_ids(client.get("/").text)
    assert sorted(ids) == ["cam/a.jpg", "cam/b.jpg", "cam/c.jpg", "cam/d.jpg"]
    html = client.get(f"/item/{ids['cam/d.jpg']}").text
    assert '<span id="predicted">badger</span>' in html
    assert client.get(f"/thumb/{ids['cam/d.jpg']}").status_code == 200
    assert card_ids(client.get("/", params={"cls": "badger"}).text) == {"cam/d.jpg": ids["cam/d.jpg"]}


def test_a_photo_moved_after_its_row_was_indexed_is_found_where_it_went(tmp_path: Path) -> None:
    """The watcher commits a row (its photo still in the inbox), then moves the photo and marks it moved."""
    db = watch_database_of(tmp_path, detections=True)
    client = client_for(db, refresh_seconds=0)
    inbox, archive = tmp_path / "inbox", tmp_path / "archive" / "2024-05-05"
    photo = write_jpeg(inbox / "cam" / "e.jpg", 8)
    store = ResultStore(db)
    try:
        store.add([ImageRecord(file="cam/e.jpg", source=str(inbox), sha256="8" * 64, size=photo.stat().st_size,
                               stored_path=str(archive / "cam" / "e.jpg"), top_k=top((1, 0.6)))])
        ids = card_ids(client.get("/").text)
        assert client.get(f"/photo/{ids['cam/e.jpg']}").content == photo.read_bytes()  # still in the inbox
        (move,) = store.pending_moves(str(inbox))
        (archive / "cam").mkdir(parents=True)
        photo.rename(archive / "cam" / "e.jpg")
        store.mark_moved(move)
    finally:
        store.close()
    assert card_ids(client.get("/").text) == ids  # the same items, the same ids
    assert client.get(f"/photo/{ids['cam/e.jpg']}").content == (archive / "cam" / "e.jpg").read_bytes()


def test_a_station_database_started_afresh_is_indexed_whole(tmp_path: Path) -> None:
    """A corrupt database is moved aside and a fresh one started (``open_for_writing``): fewer rows."""
    db = watch_database_of(tmp_path, detections=True)
    client = client_for(db, refresh_seconds=0)
    assert len(card_ids(client.get("/").text)) == 3
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = ResultStore(db)
    try:
        store.add([ImageRecord(file="cam/f.jpg", source=str(tmp_path / "inbox"), sha256="9" * 64, size=1,
                               top_k=top((2, 0.9)))])
    finally:
        store.close()
    assert list(card_ids(client.get("/").text)) == ["cam/f.jpg"]
