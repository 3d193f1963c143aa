"""Events and clips in the review: paging by event and one-action event reviews over a real run folder
(``--events``, a real MP4) and a real station database (the watcher's own rows), served by uvicorn on
127.0.0.1; old and damaged stored data read without a crash."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sqlite3
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_trap_scenes import T0, write_shot
from conftest import live, write_event_inputs
from watch_helpers import watch_in_process

from promptcam.review.access import Access
from promptcam.review.app import create_app
from promptcam.review.export import export_reviews
from promptcam.review.index import build_index, locate
from promptcam.review.query import Filters, ReviewStore

pytest.importorskip("uvicorn", reason="the review server needs uvicorn (the review extra)")


def call(base: str, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def articles(html: str) -> dict[str, list[int]]:
    """event_id -> the item ids of its files, as the event page lists them."""
    found = {}
    for block in html.split('<article class="event')[1:]:
        event_id = re.search(r'<b class="event-id"[^>]*>([^<]+)</b>', block).group(1)
        found[event_id] = [int(i) for i in re.findall(r'data-id="(\d+)"', block)]
    return found


def event_numbers(html: str) -> dict[str, int]:
    return {m[1]: int(m[0]) for m in re.findall(r'data-event="(\d+)"[^>]*>\s*<header>\s*<b class="event-id"[^>]*>'
                                                r'([^<]+)</b>', html)}


def test_run_folder_pages_by_event_and_corrects_an_event_in_one_request(event_results: Path, tmp_path: Path) -> None:
    source = locate(event_results)
    build_index(source)
    records = {r["file"]: r for r in map(json.loads, (event_results / "results.jsonl").read_text().splitlines())}
    table = {e["event_id"]: e for e in csv.DictReader((event_results / "events.csv").open(encoding="utf-8"))}
    burst = "cam1@2026-05-01T06:00:00"
    with live(create_app(source)) as (host, port):
        base = f"http://{host}:{port}"
        status, page = call(base, "/?by=event")
        html = page.decode()
        assert status == 200 and "4 events" in html
        listed = articles(html)
        assert set(listed) == set(table)  # every event of events.csv, each with its files in burst order
        store = ReviewStore(source.review_db)
        files = {i: store.item(i)["file"] for ids in listed.values() for i in ids}
        assert [files[i] for i in listed[burst]] == [f"cam1/IMG_000{k}.JPG" for k in (1, 2, 3)]
        assert [records[files[i]]["frame_num"] for i in listed[burst]] == [0, 1, 2]
        # the event's verdict and event_confidence as the run gave them
        block = html.split(f">{burst}</b>")[1].split("</header>")[0]
        assert f'{float(table[burst]["event_confidence"]) * 100:.1f}%' in block and table[burst]["verdict"] in block
        assert "3 files" in block

        # one request labels all three files of the burst
        number = event_numbers(html)[burst]
        classes = store.classes()
        right = next(c for c in classes if c != table[burst]["verdict"])
        status, answer = call(base, f"/api/event/{number}", "POST", {"label": right})
        assert status == 200, answer
        assert json.loads(answer) == {"id": number, "label": right, "files": 3, "verdict": "corrected",
                                           "corrected": sum(records[files[i]]["top_k"][0]["name"] != right
                                                            for i in listed[burst])}
        rows = store.db.execute("SELECT key, label, event_key FROM corrections").fetchall()
        assert len(rows) == 3 and {r["label"] for r in rows} == {right} and {r["event_key"] for r in rows} == {burst}
        # the other events are untouched; the event now reads as reviewed, in both views
        status, page = call(base, "/?by=event&reviewed=no")
        assert burst not in articles(page.decode()) and len(articles(page.decode())) == 3
        assert f"reviewed: {right}" in call(base, f"/?by=event&event={number}")[1].decode()
        ids = [int(i) for i in re.findall(r'data-id="(\d+)"', call(base, f"/?event={number}")[1].decode())]
        assert ids == listed[burst]

        # refused: a label that is no class, a body that is not JSON, an event that does not exist
        assert call(base, f"/api/event/{number}", "POST", {"label": "<script>"})[0] == 400
        request = urllib.request.Request(f"{base}/api/event/{number}", data=b"label=x", method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 415
        assert call(base, "/api/event/999999", "POST", {"label": right})[0] == 404
        assert store.db.execute("SELECT count(*) FROM corrections").fetchone()[0] == 3

    # the export: one row per file under the event's label, with the event and the run's verdict of it
    summary = export_reviews(store, tmp_path / "export", log=lambda _: None)
    exported = list(csv.DictReader((tmp_path / "export" / "corrections.csv").open(encoding="utf-8")))
    assert summary.reviewed == 3 and [r["file"] for r in exported] == [files[i] for i in listed[burst]]
    for row in exported:
        assert (row["label"], row["event_id"], row["labelled_by"]) == (right, burst, "event")
        assert row["event_verdict"] == table[burst]["verdict"]
        assert row["event_confidence"] == table[burst]["event_confidence"]
        assert (tmp_path / "export" / row["exported_as"]).parent.name.endswith(f".{right}")

    # undone in one action too; and, as every change, only from the page's own origin
    with live(create_app(source, access=Access.for_bind("127.0.0.1"))) as (host, port):
        for method, body in (("POST", json.dumps({"label": right}).encode()), ("DELETE", None)):
            request = urllib.request.Request(f"http://{host}:{port}/api/event/{number}", data=body, method=method,
                                             headers={"Content-Type": "application/json",
                                                      "Origin": "http://evil.example"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403
        assert store.db.execute("SELECT count(*) FROM corrections").fetchone()[0] == 3
        assert call(f"http://{host}:{port}", f"/api/event/{number}", "DELETE")[0] == 200
    assert store.db.execute("SELECT count(*) FROM corrections").fetchone()[0] == 0
    store.close()


def test_a_clip_shows_its_strip_verdict_and_decisive_frames(event_results: Path) -> None:
    source = locate(event_results)
    build_index(source)
    clip = next(r for r in map(json.loads, (event_results / "results.jsonl").read_text().splitlines())
                if r.get("media") == "video")
    store = ReviewStore(source.review_db)
    item = next(i for i in store.page(Filters(per_page=100)).items if i["media"] == "video")
    with live(create_app(source)) as (host, port):
        base = f"http://{host}:{port}"
        status, page = call(base, f"/item/{item['id']}")
        html = page.decode()
        assert status == 200
        summary = re.search(r'<h3 id="clip-summary">(.*?)</h3>', html, re.S).group(1)
        assert f"{len(clip['frames'])} frames sampled (a 10 fps clip)" in summary
        assert re.search(r'id="decisive-frames">([^<]*)<', summary).group(1) == ", ".join(
            map(str, clip["decisive_frames"]))
        assert f'<span id="predicted">{clip["top_k"][0]["name"]}</span>' in html  # the clip's verdict
        assert html.count('class="decisive"') == len(clip["decisive_frames"])
        assert 'id="overlay"' not in html  # the strip already carries the maps
        # the picture is the strip itself, and its thumbnail is the strip's
        status, strip = call(base, f"/photo/{item['id']}")
        assert status == 200 and strip == Path(clip["heatmap"]).read_bytes()
        status, thumb = call(base, f"/thumb/{item['id']}")
        small = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and max(small.shape[:2]) <= 256 and small.shape[1] > small.shape[0]
        assert 'class="tag clip">clip<' in call(base, "/")[1].decode()
    # a blank clip (no strip): its first frame stands in
    Path(clip["heatmap"]).unlink()
    with live(create_app(source)) as (host, port):
        status, still = call(f"http://{host}:{port}", f"/thumb/{item['id']}")
        assert status == 200 and cv2.imdecode(np.frombuffer(still, np.uint8), cv2.IMREAD_COLOR).shape[1] == 256
    store.close()


def test_station_events_grow_in_the_review_as_photos_arrive(tiny_predictor, tmp_path: Path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "station" / "results.sqlite"
    write_event_inputs(inbox)
    watch_in_process(tiny_predictor, inbox, db, events=60, heatmaps=tmp_path / "heat")
    source = locate(db)
    build_index(source)
    store = ReviewStore(source.review_db)
    events = {e["event_id"]: e for e in store.event_page(Filters(by="event")).items}
    assert set(events) >= {"cam1@2026-05-01T06:00:00", "cam2@2026-05-01T06:00:01", "cam1@2026-05-01T06:05:00"}
    station = sqlite3.connect(db)
    station.row_factory = sqlite3.Row
    table = {e["event_id"]: dict(e) for e in station.execute("SELECT * FROM events")}
    burst = events["cam1@2026-05-01T06:00:00"]
    assert burst["seq_num_frames"] == 3 and [f["frame_num"] for f in burst["files"]] == [0, 1, 2]
    assert (burst["verdict"], burst["event_confidence"]) == (table[burst["event_id"]]["verdict"],
                                                            table[burst["event_id"]]["event_confidence"])
    late = events["cam1@2026-05-01T06:05:00"]
    assert late["closed"] == 0 and late["seq_num_frames"] == 1
    clip = next(f for e in events.values() for f in e["files"] if f["media"] == "video")
    assert json.loads(clip["decisive_frames"]) and json.loads(clip["frames"])

    # the station restarts; a second photo joins the open event: the review, refreshed, shows it in the event
    reviewed = store.review_event(late, store.classes()[0])
    assert reviewed["files"] == 1
    write_shot(inbox / "cam1" / "IMG_0005.JPG", T0 + timedelta(seconds=310), 50)
    watch_in_process(tiny_predictor, inbox, db, events=60, heatmaps=tmp_path / "heat")
    build_index(source)
    again = store.event(late["id"])  # the same page id
    assert again["seq_num_frames"] == 2 and [f["file"] for f in again["files"]] == ["cam1/IMG_0004.JPG",
                                                                                   "cam1/IMG_0005.JPG"]
    updated = station.execute("SELECT verdict, event_confidence FROM events WHERE event_id=?",
                              (late["event_id"],)).fetchone()
    assert (again["verdict"], again["event_confidence"]) == tuple(updated)
    assert again["reviewed"] == 1 and again["label"] is None  # the new photo is not reviewed yet
    station.close()
    store.close()


def test_damaged_event_and_clip_data_is_no_crash(tiny_predictor, tmp_path: Path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "station" / "results.sqlite"
    write_event_inputs(inbox)
    watch_in_process(tiny_predictor, inbox, db, events=60, heatmaps=tmp_path / "heat")
    station = sqlite3.connect(db)
    with station:  # hostile values in every new column, and in the events table
        station.execute("UPDATE results SET frames='[[[', decisive_frames='{\"a\": 1}', frame_rate='fast', "
                        "seq_num_frames='three', frame_num=-4 WHERE media='video'")
        station.execute("UPDATE results SET event_id=12345 WHERE file='cam2/IMG_0001.JPG'")
        station.execute("UPDATE results SET event_id=? WHERE file='cam2/IMG_0002.JPG'", ("x" * 5000,))
        station.execute("UPDATE events SET top_k='{not json', event_confidence='high', verdict=7 "
                        "WHERE camera='cam1'")
    station.close()
    source = locate(db)
    build_index(source)
    app = create_app(source)
    with live(app) as (host, port):
        base = f"http://{host}:{port}"
        status, page = call(base, "/?by=event")
        assert status == 200
        store = ReviewStore(source.review_db)
        items = {i["file"]: i for i in store.page(Filters(per_page=100)).items}
        clip = items["cam3/clip.mp4"]
        assert clip["status"] == "ok" and clip["frames"] is None and clip["decisive_frames"] is None
        assert clip["frame_rate"] is None and clip["seq_num_frames"] is None and clip["frame_num"] is None
        assert call(base, f"/item/{clip['id']}")[0] == 200
        assert items["cam2/IMG_0001.JPG"]["event_id"] == "12345" and len(items["cam2/IMG_0002.JPG"]["event_id"]) == 1000
        burst = next(e for e in store.event_page(Filters(by="event", per_page=100)).items
                     if e["event_id"] == "cam1@2026-05-01T06:00:00")
        # (SQLite's TEXT column turned the number into text: a verdict like any other, escaped on the page)
        assert burst["event_confidence"] == -1 and json.loads(burst["top_k"]) == [] and burst["verdict"] == "7"
        header = page.decode().split(">cam1@2026-05-01T06:00:00<")[1].split("</header>")[0]
        assert 'title="event_confidence"' not in header
        store.close()

    # a station database from before --events: no event columns, no events table
    old = tmp_path / "old" / "results.sqlite"
    old.parent.mkdir()
    shutil.copy(db, old)
    con = sqlite3.connect(old)
    with con:
        con.execute("DROP INDEX results_event")
        for column in ("event_id", "seq_num_frames", "frame_num", "media", "frame_rate", "frames", "decisive_frames"):
            con.execute(f"ALTER TABLE results DROP COLUMN {column}")
        con.execute("DROP TABLE events")
    con.close()
    source = locate(old)
    build_index(source)
    with live(create_app(source)) as (host, port):
        status, page = call(f"http://{host}:{port}", "/?by=event")
        assert status == 200 and "No events match" in page.decode()
        assert "7 results" in call(f"http://{host}:{port}", "/")[1].decode()


def test_a_damaged_run_folder_and_an_old_review_database(event_results: Path) -> None:
    # events.csv with a torn row, a probability out of range and bytes that are not UTF-8; journal lines
    # whose event and clip fields have the wrong types
    (event_results / "events.csv").write_bytes(
        b"event_id,camera,start,end,seq_num_frames,files,verdict,event_confidence,top_k\n"
        b"cam1@2026-05-01T06:00:00,cam1,,,3,,\xff\xfe,2.5,a:nan;b:0.2;:::\n"
        b"cam2@2026-05-01T06:00:01,\"unclosed\n")
    lines = (event_results / "results.jsonl").read_text().splitlines()
    damaged = []
    for line in lines:
        record = json.loads(line)
        if record.get("media") == "video":
            record |= {"frames": "many", "decisive_frames": [1, "x"], "frame_rate": -3}
        if record["file"] == "cam1/IMG_0004.JPG":
            record |= {"seq_num_frames": "one", "frame_num": 2**40, "event_id": ["list"]}
        damaged.append(json.dumps(record))
    (event_results / "results.jsonl").write_text("\n".join(damaged) + "\n")
    # a review database written before events existed, with a review in it
    review_db = event_results / "review.sqlite"
    con = sqlite3.connect(review_db)
    con.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, file TEXT NOT NULL, image TEXT,
            heatmap TEXT, traits TEXT, source TEXT NOT NULL, day TEXT NOT NULL, taken_at TEXT, status TEXT NOT NULL,
            failure TEXT, top1 TEXT NOT NULL, confidence REAL NOT NULL, top_k TEXT NOT NULL, explained_class TEXT,
            trait_heads TEXT, detections TEXT, crops INTEGER NOT NULL, width INTEGER, height INTEGER);
        CREATE TABLE corrections (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, label TEXT NOT NULL,
            predicted TEXT NOT NULL, reviewed_at TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)
    key = next(json.loads(line)["path"] for line in lines if "IMG_0001" in line and "cam2" in line)
    con.execute("INSERT INTO corrections VALUES (?, 'corrected', 'somewhere', 'x', 'then')", (key,))
    con.commit()
    con.close()
    source = locate(event_results)
    build_index(source)
    store = ReviewStore(source.review_db)
    items = {i["file"]: i for i in store.page(Filters(per_page=100)).items}
    assert items["cam2/IMG_0001.JPG"]["label"] == "somewhere"  # the old review survives the new index
    clip = items["cam3/clip.mp4"]
    assert clip["frames"] is None and clip["decisive_frames"] is None and clip["frame_rate"] is None
    odd = items["cam1/IMG_0004.JPG"]
    assert (odd["event_id"], odd["seq_num_frames"], odd["frame_num"]) == ("['list']", None, None)
    events = {e["event_id"]: e for e in store.event_page(Filters(by="event", per_page=100)).items}
    burst = events["cam1@2026-05-01T06:00:00"]
    assert burst["event_confidence"] == -1 and json.loads(burst["top_k"]) == [{"name": "b", "probability": 0.2}]
    assert events["cam2@2026-05-01T06:00:01"]["verdict"] is None  # its row was torn
    with live(create_app(source)) as (host, port):
        assert call(f"http://{host}:{port}", "/?by=event")[0] == 200
        assert call(f"http://{host}:{port}", f"/item/{clip['id']}")[0] == 200
    store.close()
