"""``promptcam serve`` for real: one Triton server on 127.0.0.1 for the module, clients over HTTP and gRPC.

Served results equal the local Predictor's; the README's client example runs; eight concurrent clients get
no error and Triton batches their requests together; malformed requests are refused and the server stays up;
``promptcam run --server`` writes what a local run writes.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from serve_helpers import ServedModel, needs_triton

from helpers import run_cli

# one worker runs the module under pytest-xdist (--dist loadgroup), so its tests share one server
pytestmark = [needs_triton, pytest.mark.xdist_group("serving")]

README = Path(__file__).parents[2] / "README.md"
MAX_BATCH = 8


@pytest.fixture(scope="module")
def server(tiny_export: Path):
    # a long queue delay: concurrent single-image requests are certain to be batched together
    served = ServedModel(tiny_export, "--max-batch-size", MAX_BATCH, "--max-queue-delay-us", 20000,
                         "--threads", 1).start()
    yield served
    assert served.stop() == 0, served.log()


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 9 * i, 56 + 5 * (i % 3), 3), dtype=np.uint8) for i in range(count)]


def test_log_names_model_sha_engine_and_endpoints(server: ServedModel, tiny_export: Path) -> None:
    from promptcam.core.atomic import file_sha256

    log = server.log()
    assert f"sha256 {file_sha256(tiny_export / 'model.onnx')}" in log
    assert "engine ort-cpu: onnxruntime" in log
    for url in (server.http, server.grpc, server.metrics):
        assert url in log


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_equals_local(server: ServedModel, tiny_export: Path, tiny_predictor, protocol: str) -> None:
    from promptcam.runtime.predictor import Predictor

    images = _images(11)
    with Predictor(tiny_export, batch_size=MAX_BATCH, server=getattr(server, protocol)) as remote:
        assert remote.engine_description.startswith("server: Triton server")
        for kwargs in ({"traits": 2}, {"compare": 3}, {"classes": [1, 4]}):
            local, served = tiny_predictor.predict(images, **kwargs), remote.predict(images, **kwargs)
            for a, b in zip(local, served, strict=True):
                assert a.top1.index == b.top1.index
                assert np.abs(a.logits - b.logits).max() <= 1e-5
                assert a.attention.keys() == b.attention.keys()
                for c in a.attention:
                    assert np.array_equal(a.attention[c], b.attention[c])
                assert {c: t.top_heads for c, t in a.traits.items()} == {c: t.top_heads for c, t in b.traits.items()}


def test_station_manifest_must_match_the_served_one(server: ServedModel, tiny_export: Path, tmp_path: Path) -> None:
    """A station whose model folder is not the served model's is refused at start, not mislabelled."""
    import shutil

    from promptcam.core.errors import ManifestError
    from promptcam.runtime.predictor import Predictor

    other = tmp_path / "renamed"
    shutil.copytree(tiny_export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["class_names"] = list(reversed(manifest["config"]["class_names"]))
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="class"):
        Predictor(other, server=server.http, server_wait=1)


def _readme_client_example() -> str:
    text = README.read_text()
    block = text.split("<!-- CLIENT EXAMPLE: tests/serving/test_serve.py runs it -->", 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_readme_client_example_runs(server: ServedModel, tiny_export: Path, tiny_predictor, tmp_path: Path) -> None:
    photo = tmp_path / "bird.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(_images(1, seed=3)[0], cv2.COLOR_RGB2BGR))
    code = (_readme_client_example().replace('"models/cub"', repr(str(tiny_export)))
            .replace('"bird.jpg"', repr(str(photo)))
            .replace('"localhost:8000"', repr(server.http[7:])).replace('"localhost:8001"', repr(server.grpc[7:])))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = tiny_predictor.predict([photo])[0].top1.name
    assert result.stdout.splitlines() == [f"{expected} (8, 8)"] * 2, result.stdout


def _metric(server: ServedModel, name: str) -> float:
    with urllib.request.urlopen(server.metrics, timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="promptcam"' in line)


def test_eight_concurrent_clients_are_batched(server: ServedModel, tiny_export: Path, tiny_predictor) -> None:
    from promptcam.runtime.predictor import Predictor

    images = _images(8, seed=5)
    expected = [p.top1.index for p in tiny_predictor.predict(images)]
    inferences, executions = _metric(server, "nv_inference_count"), _metric(server, "nv_inference_exec_count")
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(8)

    def client(k: int) -> None:
        url = server.grpc if k % 2 else server.http
        try:
            with Predictor(tiny_export, batch_size=1, server=url, server_wait=5) as remote:
                start.wait()
                for i in range(12):  # bounded: 8 x 12 single-image requests
                    t0 = time.perf_counter()
                    prediction = remote.predict([images[(k + i) % 8]])[0]
                    latencies.append(time.perf_counter() - t0)
                    if prediction.top1.index != expected[(k + i) % 8]:
                        errors.append(f"client {k}, request {i}: class {prediction.top1.index}")
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none may happen
            errors.append(f"client {k}: {exc!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(latencies) == 96
    # Triton counts a request once its response is sent: the last few may show a moment after the clients
    deadline = time.monotonic() + 10
    while (images_served := _metric(server, "nv_inference_count") - inferences) < 96 and time.monotonic() < deadline:
        time.sleep(0.1)
    batches = _metric(server, "nv_inference_exec_count") - executions
    assert images_served == 96
    assert images_served / batches > 1.0, (images_served, batches)  # dynamic batching put requests together
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\n8 clients x 12 requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"{images_served / batches:.2f} images per model execution")


def _http_infer(server: ServedModel, body: bytes, header_length: int | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=10)
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    connection.request("POST", "/v2/models/promptcam/infer", body=body, headers=headers)
    response = connection.getresponse()
    status, text = response.status, response.read().decode("utf-8", "replace")
    connection.close()
    return status, text


def _binary_request(shape: list[int], datatype: str, data: bytes) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "pixels", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": "top_class", "parameters": {"binary_data": True}}]}).encode()
    return header + data, len(header)


def test_bad_requests_get_clean_errors_and_the_server_stays_up(server: ServedModel, tiny_export: Path,
                                                              tiny_predictor) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    size = tiny_predictor.config.img_size
    cases = {
        "wrong dtype": np.zeros((1, size, size, 3), np.float32),
        "wrong image size": np.zeros((1, size + 1, size, 3), np.uint8),
        "batch 0": np.zeros((0, size, size, 3), np.uint8),
        "batch over the maximum": np.zeros((MAX_BATCH + 1, size, size, 3), np.uint8),
    }
    client = grpcclient.InferenceServerClient(server.grpc[7:])
    for case, pixels in cases.items():
        request = grpcclient.InferInput("pixels", list(pixels.shape), "FP32" if pixels.dtype == np.float32 else "UINT8")
        request.set_data_from_numpy(pixels)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("promptcam", [request])
        assert "INVALID_ARGUMENT" in str(refused.value.status()) or "batch of 0" in str(refused.value), case
    client.close()

    # HTTP: the same refusals, and bodies that are cut short or lie about their size
    good = np.zeros((2, size, size, 3), np.uint8).tobytes()
    whole, header = _binary_request([2, size, size, 3], "UINT8", good)
    assert _http_infer(server, whole, header)[0] == 200
    for case, (body, length) in {
        "truncated pixels": (whole[:-100], header),
        "truncated JSON header": (whole[: header // 2], header),
        "header longer than the body": (whole[:header], header + 10),
        "pixels of the wrong size": _binary_request([2, size, size, 3], "UINT8", good[:-size]),
        "not JSON": (b"\x00\xff" * 40, 80),
    }.items():
        status, text = _http_infer(server, body, length)
        # Triton answers 400, and 500 for a header that is not JSON at all; either way one JSON error
        assert status in (400, 500), (case, status, text)
        assert "error" in json.loads(text), case

    with urllib.request.urlopen(f"{server.http}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    from promptcam.runtime.predictor import Predictor

    with Predictor(tiny_export, server=server.http) as remote:
        assert remote.predict(_images(1))[0].top1.index == tiny_predictor.predict(_images(1))[0].top1.index


def test_run_with_server_writes_what_a_local_run_writes(server: ServedModel, tiny_export: Path,
                                                        tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_images(6, seed=9)):
        cv2.imwrite(str(photos / f"p{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    outputs = {}
    for name, extra in (("local", ["--engine", "ort-cpu"]), ("served", ["--server", server.grpc])):
        out = tmp_path / name
        result = run_cli("promptcam", "run", "--model", tiny_export, photos, "--out", out, "--heatmaps",
                         out / "maps", "--traits", 2, "--batch-size", 4, "--threads", 1, "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = json.loads((out / "results.json").read_text().replace(str(out), "OUT"))
    local, served = outputs["local"], outputs["served"]
    assert served["info"]["classifier_metadata"]["engine"].startswith("server: Triton server grpc://127.0.0.1")
    assert served["info"]["classifier_metadata"]["model_sha256"] == local["info"]["classifier_metadata"]["model_sha256"]
    assert served["images"] == local["images"]
    for image in local["images"]:
        for key in ("heatmap", "traits_image"):
            path = image["promptcam"][key].replace("OUT", "")
            assert (tmp_path / "local" / path.lstrip("/")).read_bytes() == \
                (tmp_path / "served" / path.lstrip("/")).read_bytes()


def test_watch_with_server_classifies_the_inbox(server: ServedModel, tiny_export: Path, tiny_predictor,
                                                tmp_path: Path) -> None:
    from watch_helpers import db_rows, jpeg

    inbox = tmp_path / "inbox"
    for i in range(3):
        jpeg(inbox / f"cam_{i}.jpg", seed=20 + i)
    local = {p.name: tiny_predictor.predict([p])[0].top1.name for p in sorted(inbox.iterdir())}
    result = run_cli("promptcam", "watch", inbox, "--model", tiny_export, "--server", server.grpc, "--db",
                     tmp_path / "results.sqlite", "--once", "--no-events", "--settle", 0, "--poll", 0.05)
    assert result.returncode == 0, result.stderr
    assert "engine server: Triton server grpc://127.0.0.1" in result.stderr
    assert {r["file"]: r["top1"] for r in db_rows(tmp_path / "results.sqlite")} == local
