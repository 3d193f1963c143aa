"""The review app over HTTP (Starlette's test client): grid, filters, media, reviews, safety."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import HOSTILE_CLASS, HOSTILE_NAME

from promptcam.results.journal import Journal
from promptcam.review.app import create_app
from promptcam.review.index import build_index, locate
from promptcam.review.media import Explainer

pytest.importorskip("httpx", reason="starlette's test client needs httpx (the dev extra)")
from starlette.testclient import TestClient  # noqa: E402


def client_for(results: Path, **kwargs) -> TestClient:
    source = locate(results)
    build_index(source, class_names=kwargs.get("explainer").class_names if kwargs.get("explainer") else None)
    return TestClient(create_app(source, **kwargs), raise_server_exceptions=False)


def card_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="card [^"]*" href="[^"]*" data-id="(\d+)"', html)]


def test_run_folder_is_indexed_from_the_journal(results_copy: Path, run_folder: Path) -> None:
    records = Journal(results_copy / "results.jsonl").read()
    client = client_for(results_copy)
    html = client.get("/").text
    assert len(card_ids(html)) == len(records) == 10
    assert "10 results" in html
    store = client.app.state.review.store
    items = store.page(store_filters(per_page=100)).items
    assert {i["source"] for i in items} == {"camA", "camB"}
    ok = [i for i in items if i["status"] == "ok"]
    assert len(ok) == 9 and all(Path(i["heatmap"]).is_file() and Path(i["traits"]).is_file() for i in ok)
    failed = [i for i in items if i["status"] == "failed"]
    assert [Path(i["file"]).name for i in failed] == ["broken.jpg"] and failed[0]["confidence"] == -1


def store_filters(**values):
    from promptcam.review.query import Filters

    return Filters.from_query({k: str(v) for k, v in values.items()})


def test_filters_sort_and_pagination(results_copy: Path) -> None:
    client = client_for(results_copy)
    store = client.app.state.review.store
    everything = store.page(store_filters(per_page=100)).items
    classes = sorted({i["top1"] for i in everything if i["top1"]})
    cls = classes[0]
    expected = sorted(i["id"] for i in everything if i["top1"] == cls)
    assert sorted(card_ids(client.get("/", params={"cls": cls}).text)) == expected
    assert len(card_ids(client.get("/", params={"status": "failed"}).text)) == 1
    assert len(card_ids(client.get("/", params={"source": "camA"}).text)) == 5
    threshold = sorted(i["confidence"] for i in everything if i["confidence"] >= 0)[4]
    high = card_ids(client.get("/", params={"min_conf": threshold}).text)
    assert sorted(high) == sorted(i["id"] for i in everything if i["confidence"] >= threshold)
    by_conf = card_ids(client.get("/", params={"sort": "confidence", "order": "desc"}).text)
    confidence = {i["id"]: i["confidence"] for i in everything}
    assert [confidence[i] for i in by_conf] == sorted(confidence.values(), reverse=True)
    # pages of 3 cover everything once, in order
    pages = [card_ids(client.get("/", params={"per_page": 3, "page": p}).text) for p in range(1, 5)]
    assert [i for p in pages for i in p] == sorted(confidence) and [len(p) for p in pages] == [3, 3, 3, 1]
    assert "crop" not in client.get("/", params={"crops": "yes"}).text.split('id="grid"')[1].split("</section>")[0]


def test_item_page_neighbours_follow_the_filter(results_copy: Path) -> None:
    client = client_for(results_copy)
    ids = card_ids(client.get("/", params={"source": "camB", "sort": "file"}).text)
    page = client.get(f"/item/{ids[1]}", params={"source": "camB", "sort": "file"}).text
    data = json.loads(re.search(r'<script id="page-data" type="application/json">(.*?)</script>', page).group(1))
    assert (data["previous"], data["next"]) == (ids[0], ids[2])
    first = json.loads(re.search(r'application/json">(.*?)</script>',
                                 client.get(f"/item/{ids[0]}", params={"source": "camB", "sort": "file"}).text)[1])
    assert first["previous"] is None


def test_media_are_the_files_named_in_the_results(results_copy: Path) -> None:
    client = client_for(results_copy)
    store = client.app.state.review.store
    item = next(i for i in store.page(store_filters(status="ok", per_page=100)).items)
    assert client.get(f"/photo/{item['id']}").content == Path(item["image"]).read_bytes()
    assert client.get(f"/heatmap/{item['id']}").content == Path(item["heatmap"]).read_bytes()
    assert client.get(f"/traits/{item['id']}").content == Path(item["traits"]).read_bytes()
    thumb = client.get(f"/thumb/{item['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    pixels = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
    assert pixels.shape[:2] == (96, 128)  # small photos are not enlarged
    assert len(list((results_copy / ".review-cache").glob("*.thumb.jpg"))) == 1  # made once, then cached
    page = client.get(f"/item/{item['id']}").text
    for c in json.loads(item["top_k"]):
        assert c["name"] in page
    broken = store.page(store_filters(status="failed")).items[0]
    answer = client.get(f"/thumb/{broken['id']}")
    assert answer.status_code == 404 and "broken.jpg" in answer.text and "Traceback" not in answer.text


@pytest.mark.parametrize("url", [
    "/photo/../../../../etc/passwd", "/photo/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/photo//etc/passwd",
    "/photo/%2Fetc%2Fpasswd", "/heatmap/-1", "/photo/999999", "/thumb/1abc", "/traits/1.5", "/item/0",
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/explain/1/0", "/item/99999999999999999999",
])
def test_traversal_and_unknown_ids_are_4xx(results_copy: Path, url: str) -> None:
    client = client_for(results_copy)
    answer = client.get(url)
    assert 400 <= answer.status_code < 500, (url, answer.status_code)
    assert "root:" not in answer.text and "import" not in answer.text and "Traceback" not in answer.text


@pytest.mark.parametrize(("params", "words"), [
    ({"min_conf": "abc"}, "min_conf must be a number"), ({"max_conf": "2"}, "max_conf must be a number from 0 to 1"),
    ({"sort": "id; DROP TABLE items"}, "sort must be one of"), ({"page": "0"}, "page must be a whole number"),
    ({"per_page": "100000"}, "per_page must be"), ({"day_from": "2024-13-40"}, "day_from must be a date"),
    ({"min_conf": "nan"}, "min_conf must be a number"),
])
def test_bad_query_parameters_are_a_clear_400(results_copy: Path, params: dict, words: str) -> None:
    answer = client_for(results_copy).get("/", params=params)
    assert answer.status_code == 400 and words in answer.text and "Traceback" not in answer.text


def test_file_and_class_names_are_escaped(results_copy: Path, station_db: Path) -> None:
    client = client_for(results_copy)
    grid = client.get("/").text
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in grid and HOSTILE_NAME not in grid
    hostile = next(i for i in client.app.state.review.store.page(store_filters(per_page=100)).items
                   if i["file"].endswith(HOSTILE_NAME))
    page = client.get(f"/item/{hostile['id']}").text
    assert HOSTILE_NAME not in page and "&lt;img src=x" in page
    station = client_for(station_db)
    for html in (station.get("/").text, station.get("/item/1").text, station.get("/item/2").text):
        assert HOSTILE_CLASS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert station.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_reviews_live_in_their_own_table(results_copy: Path) -> None:
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in results_copy.glob("results.*")}
    client = client_for(results_copy)
    store = client.app.state.review.store
    a, b = store.page(store_filters(status="ok", per_page=2)).items
    other = next(c for c in store.classes() if c != b["top1"])
    assert client.post(f"/api/review/{a['id']}", json={"label": a["top1"]}).json()["verdict"] == "confirmed"
    assert client.post(f"/api/review/{b['id']}", json={"label": other}).json()["verdict"] == "corrected"
    assert sorted(card_ids(client.get("/", params={"reviewed": "yes"}).text)) == [a["id"], b["id"]]
    assert card_ids(client.get("/", params={"reviewed": "corrected"}).text) == [b["id"]]
    assert len(card_ids(client.get("/", params={"reviewed": "no"}).text)) == 8
    # re-indexing (the results changed) keeps the reviews: they are keyed by the image, not the row
    build_index(locate(results_copy), force=True)
    assert client.get(f"/item/{b['id']}").text.count(f"corrected to: {other}") == 1
    assert client.delete(f"/api/review/{a['id']}").json()["verdict"] is None
    assert card_ids(client.get("/", params={"reviewed": "yes"}).text) == [b["id"]]
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in results_copy.glob("results.*")}
    assert after == before


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"json": {"label": "no such class"}}, 400, "unknown class"),
    ({"json": {"label": 3}}, 400, "label must be a class name"),
    ({"json": ["x"]}, 400, "body must be JSON"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "body must be JSON"),
    ({"data": {"label": "x"}}, 415, "application/json"),  # a cross-site form post
    ({"content": b'{"label": "' + b"x" * 5000 + b'"}', "headers": {"content-type": "application/json"}}, 413,
     "too large"),
])
def test_bad_reviews_are_refused(results_copy: Path, kwargs: dict, status: int, words: str) -> None:
    client = client_for(results_copy)
    answer = client.post("/api/review/2", **kwargs)
    assert answer.status_code == status and words in answer.json()["error"]
    assert client.post("/api/review/999", json={"label": "x"}).status_code == 404
    assert client.get("/api/review/2").status_code == 405


def test_station_database(station_db: Path, tmp_path: Path) -> None:
    client = client_for(station_db)
    store = client.app.state.review.store
    items = {i["file"]: i for i in store.page(store_filters(per_page=100)).items}
    assert items["site1/x.jpg"]["image"] == str(tmp_path / "inbox" / "site1" / "x.jpg")
    assert items["site1/y.jpg"]["image"] == str(tmp_path / "archive" / "2024-05-02" / "site1" / "y.jpg")
    assert items["gate/f1.jpg"]["image"] == str(tmp_path / "station" / "frames" / "gate" / "f1.jpg")
    for item in items.values():
        assert client.get(f"/photo/{item['id']}").content == Path(item["image"]).read_bytes()
    assert store.classes() == ["fox", HOSTILE_CLASS, "deer"]
    assert len(card_ids(client.get("/", params={"day_from": "2024-05-02", "day_to": "2024-06-01"}).text)) == 2
    assert len(card_ids(client.get("/", params={"source": "rtsp://cam/gate"}).text)) == 1
    assert len(card_ids(client.get("/", params={"status": "failed"}).text)) == 1
    assert not (station_db.parent / "review.sqlite").exists() and station_db.with_name(
        "results.sqlite.review.sqlite").is_file()


def test_detection_boxes_and_the_crops_filter(results_copy: Path) -> None:
    """A record with a ``detections`` list (``--detections`` runs) is a crop result; whole-image ones are not."""
    from promptcam.results.formats import write_jsonl

    records = Journal(results_copy / "results.jsonl").read()
    target = next(r for r in records if r.ok)
    target.detections = [
        {"category": "1", "conf": 0.93, "bbox": [0.1, 0.2, 0.3, 0.4], "classifications": [["1", 0.8], ["0", 0.2]]},
        {"category": "2", "conf": 0.4, "bbox": [0.5, 0.5, 0.2, 0.2]},  # a person: not classified
    ]
    write_jsonl(results_copy / "results.jsonl", records)
    client = client_for(results_copy)
    store = client.app.state.review.store
    item_id = next(i["id"] for i in store.page(store_filters(per_page=100)).items if i["key"] == target.path)
    assert card_ids(client.get("/", params={"crops": "yes"}).text) == [item_id]
    assert item_id not in card_ids(client.get("/", params={"crops": "no"}).text)
    assert "2 crops" in client.get("/", params={"crops": "yes"}).text
    page = client.get(f"/item/{item_id}").text
    assert '"boxes": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.2, 0.2]]' in page and "2 detections" in page
    assert f"{store.classes()[1]} 80.0%" in page and "category 2 · conf 0.40" in page


def test_other_classes_heatmaps_on_demand(results_copy: Path, tiny_export: Path) -> None:
    explainer = Explainer(tiny_export, "ort-cpu")
    try:
        client = client_for(results_copy, explainer=explainer)
        item = client.app.state.review.store.page(store_filters(status="ok")).items[0]
        maps = []
        for index in (0, 1):
            answer = client.get(f"/explain/{item['id']}/{index}")
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
            maps.append(cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR))
        assert maps[0].shape[:2] == (96, 128)  # drawn over the photo at its size
        assert np.abs(maps[0].astype(int) - maps[1]).mean() > 0.5  # two classes, two different maps
        assert client.get(f"/explain/{item['id']}/{len(explainer.class_names)}").status_code == 404
        assert 'id="explain-class"' in client.get(f"/item/{item['id']}").text
    finally:
        explainer.close()


def test_an_internal_error_is_a_short_500_without_traceback(results_copy: Path) -> None:
    client = client_for(results_copy)
    store = client.app.state.review.store

    def broken(filters):  # the database failing under the page (a full disk, a lock held too long)
        raise RuntimeError("secret detail of the failure")

    store.page = broken
    answer = client.get("/")
    assert answer.status_code == 500 and "internal error" in answer.text
    assert "secret detail" not in answer.text and "Traceback" not in answer.text


def test_review_imports_without_torch() -> None:
    """The review layer runs on a field laptop without torch, timm or onnx."""
    import subprocess
    import sys

    from test_layers import BLOCK, HEAVY

    code = BLOCK.format(blocked=sorted(HEAVY)) + "".join(
        f"import promptcam.review.{m}\n" for m in ("app", "cli", "export", "index", "media", "query"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
