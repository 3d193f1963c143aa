"""100,000 results: pages come from indexed queries (correct rows, the planner uses the indexes).

Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from promptcam.review.events import refresh_events
from promptcam.review.index import ITEM_COLUMNS, connect, insert_items, set_classes
from promptcam.review.query import Filters, ReviewStore

N = 100_000
CLASSES = [f"species {i:02d}" for i in range(40)]


@pytest.fixture(scope="module")
def big_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "review.sqlite"
    rng = np.random.default_rng(0)
    classes = rng.integers(0, len(CLASSES), N)
    confidence = np.round(rng.random(N), 6)
    failed = rng.random(N) < 0.01

    def rows():
        for i in range(N):
            ok = not failed[i]
            top = [{"index": int(classes[i]), "name": CLASSES[classes[i]], "probability": float(confidence[i])}]
            values = {"key": f"/data/cam{i % 25:02d}/img{i:06d}.jpg", "file": f"cam{i % 25:02d}/img{i:06d}.jpg",
                      "image": None, "heatmap": None, "traits": None, "source": f"cam{i % 25:02d}",
                      "day": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}", "taken_at": None,
                      "status": "ok" if ok else "failed", "failure": None if ok else "cannot decode",
                      "top1": CLASSES[classes[i]] if ok else "", "confidence": float(confidence[i]) if ok else -1.0,
                      "top_k": json.dumps(top if ok else []), "explained_class": None, "trait_heads": None,
                      "detections": None, "crops": 0, "width": 4000, "height": 3000,
                      # bursts of 5: a camera's consecutive photos (25 cameras take turns)
                      "event_key": f"cam{i % 25:02d}@{i // 125:04d}", "event_id": f"cam{i % 25:02d}@{i // 125:04d}",
                      "seq_num_frames": 5, "frame_num": (i % 125) // 25}
            yield tuple(values.get(c) for c in ITEM_COLUMNS)

    db = connect(path)
    started = time.perf_counter()
    with db:
        db.execute("BEGIN")
        assert insert_items(db, rows()) == N
        set_classes(db, CLASSES)
        # a thousand reviews, spread over the ids
        refresh_events(db, {})
        db.executemany("INSERT INTO corrections (key, verdict, label, predicted, reviewed_at) "
                       "VALUES (?, 'confirmed', 'species 00', 'species 00', 'now')",
                       [(f"/data/cam{i % 25:02d}/img{i:06d}.jpg",) for i in range(0, N, 100)])
    db.execute("ANALYZE")
    db.close()
    print(f"\nindexed {N} rows in {time.perf_counter() - started:.2f} s")
    return path


CASES = {
    "first page": {},
    "last page": {"page": str(N // 60 + 1)},
    "class, by confidence": {"cls": "species 07", "sort": "confidence", "order": "desc"},
    "class + confidence range, page 20": {"cls": "species 07", "min_conf": "0.2", "max_conf": "0.8", "page": "20"},
    "failures": {"status": "failed"},
    "camera + dates": {"source": "cam03", "day_from": "2024-03-01", "day_to": "2024-06-30"},
    "not reviewed, by confidence": {"reviewed": "no", "sort": "confidence"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_page_of_100k_results(big_index: Path, case: str) -> None:
    store = ReviewStore(big_index)
    filters = Filters.from_query(CASES[case])
    started = time.perf_counter()
    page = store.page(filters)
    seconds = time.perf_counter() - started
    print(f"\n{case}: {len(page.items)} of {page.total} in {seconds * 1000:.1f} ms")
    where, params = filters.where()
    all_rows = store.db.execute(f"SELECT id FROM items WHERE {where} ORDER BY {filters.order_by()}", params).fetchall()
    start = (filters.page - 1) * filters.per_page
    assert [r["id"] for r in page.items] == [r[0] for r in all_rows[start:start + filters.per_page]]
    assert page.total == len(all_rows) > 0
    if filters.cls:
        assert {r["top1"] for r in page.items} == {filters.cls}
    store.close()


def test_filtered_pages_use_the_indexes(big_index: Path) -> None:
    store = ReviewStore(big_index)
    for params, index in (({"cls": "species 07", "sort": "confidence"}, "items_class"),
                          ({"sort": "confidence"}, "items_confidence"),
                          ({"source": "cam03"}, "items_source"), ({"status": "failed"}, "items_status")):
        filters = Filters.from_query(params)
        where, values = filters.where()
        plan = " ".join(r[3] for r in store.db.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM items WHERE {where} ORDER BY {filters.order_by()} LIMIT 60", values))
        assert index in plan, (params, plan)
        assert "USE TEMP B-TREE" not in plan or params.get("sort") is None, plan
    store.close()


def test_neighbours_at_100k(big_index: Path) -> None:
    store = ReviewStore(big_index)
    filters = Filters.from_query({"cls": "species 07", "sort": "confidence", "order": "desc"})
    where, params = filters.where()
    ids = [r[0] for r in store.db.execute(
        f"SELECT id FROM items WHERE {where} ORDER BY {filters.order_by()}", params)]
    middle = len(ids) // 2
    started = time.perf_counter()
    assert store.neighbours(store.item(ids[middle]), filters) == (ids[middle - 1], ids[middle + 1])
    print(f"\nneighbours in {(time.perf_counter() - started) * 1000:.1f} ms")
    assert store.neighbours(store.item(ids[0]), filters) == (None, ids[1])
    store.close()


EVENT_CASES = {
    "events, last page": {"by": "event", "page": str(N // 5 // 60 + 1)},
    "events of a camera, not reviewed": {"by": "event", "source": "cam03", "reviewed": "no"},
    "events with a confirmed file, by date": {"by": "event", "reviewed": "confirmed", "sort": "date", "order": "desc"},
}


@pytest.mark.parametrize("case", sorted(EVENT_CASES))
def test_a_page_of_20k_events(big_index: Path, case: str) -> None:
    store = ReviewStore(big_index)
    filters = Filters.from_query(EVENT_CASES[case])
    started = time.perf_counter()
    page = store.event_page(filters)
    print(f"\n{case}: {len(page.items)} of {page.total} in {(time.perf_counter() - started) * 1000:.1f} ms")
    where, params = filters.event_where()
    keys = [r[0] for r in store.db.execute(f"SELECT key FROM events WHERE {where} ORDER BY {filters.event_order_by()}",
                                           params)]
    start = (filters.page - 1) * filters.per_page
    assert [e["key"] for e in page.items] == keys[start:start + filters.per_page] and page.total == len(keys) > 0
    for event in page.items:  # each event holds its 5 files, in burst order
        assert [f["frame_num"] for f in event["files"]] == [0, 1, 2, 3, 4] and event["seq_num_frames"] == 5
        if filters.source:
            assert {f["source"] for f in event["files"]} == {filters.source}
        if filters.reviewed == "no":
            assert any(f["verdict"] is None for f in event["files"])
        if filters.reviewed == "confirmed":
            assert any(f["verdict"] == "confirmed" for f in event["files"])
    store.close()
