"""The "served" row: images per second through ``promptcam serve`` against the same model run locally.

At concurrency C, C client threads each send one image per request to a ``promptcam serve`` on this
machine (half over HTTP, half over gRPC), and Triton's dynamic batching puts their requests together;
the local side runs the same model in this process on batches of C images, the best that batching can
form. Both use the same ONNX Runtime threads; the clients share the machine with the server, as stations
would not (their decoding is not part of either side). Where the time goes is read from Triton's own
metrics: the time requests queued, the model's compute, and the rest (client, transport, Triton).

By hand (2 threads, the demo model)::

    promptcam bench --served MODEL_DIR --threads 2 --out bench_out
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.manifest import read_manifest
from promptcam.runtime.predictor import Predictor
from promptcam.serving.server import ServeOptions, Server

METRICS = ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
           "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
           "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
           "nv_inference_compute_output_duration_us")


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own loopback server
        text = response.read().decode()
    found = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in found and 'model="promptcam"' in line:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found


def _local(model_dir: Path, pixels: np.ndarray, concurrency: int, threads: int, seconds: float) -> dict[str, float]:
    size = pixels.shape[1]
    with Predictor(model_dir, "ort-cpu", batch_size=concurrency, threads=threads) as predictor:
        batch = pixels[:concurrency]
        predictor.predict_pixels(batch, [(size, size)] * concurrency)  # warm-up
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor.predict_pixels(batch, [(size, size)] * concurrency)
            images += concurrency
        return {"images_per_second": images / (time.perf_counter() - started)}


def _served(model_dir: Path, server: Server, pixels: np.ndarray, concurrency: int,
            seconds: float) -> dict[str, float]:
    size = pixels.shape[1]
    options = server.options
    urls = [f"http://127.0.0.1:{options.http_port}", f"grpc://127.0.0.1:{options.grpc_port}"]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    ready, go = threading.Barrier(concurrency + 1), threading.Event()

    def client(k: int) -> None:
        with Predictor(model_dir, batch_size=1, server=urls[k % 2], server_wait=5) as remote:
            one = pixels[k % len(pixels)][None]
            remote.predict_pixels(one, [(size, size)])  # warm-up, connection open
            ready.wait()
            go.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    remote.predict_pixels(one, [(size, size)])
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(repr(exc))
                    return
                latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    metrics_url = f"http://127.0.0.1:{options.metrics_port}/metrics"
    before = _metrics(metrics_url)
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    after = _metrics(metrics_url)
    delta = {k: after[k] - before[k] for k in METRICS}
    flat = np.array([x for per in latencies for x in per])
    requests = max(delta["nv_inference_request_success"], 1.0)
    return {"images_per_second": len(flat) / elapsed, "errors": len(errors),
            "p50_ms": float(np.percentile(flat, 50) * 1000) if len(flat) else 0.0,
            "p99_ms": float(np.percentile(flat, 99) * 1000) if len(flat) else 0.0,
            "images_per_execution": delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1.0),
            # per request, milliseconds: Triton's end-to-end, its queue, and the model's compute (one batch's
            # compute is counted once per request in it)
            "server_request_ms": delta["nv_inference_request_duration_us"] / requests / 1000,
            "server_queue_ms": delta["nv_inference_queue_duration_us"] / requests / 1000,
            "server_compute_ms": (delta["nv_inference_compute_input_duration_us"]
                                  + delta["nv_inference_compute_infer_duration_us"]
                                  + delta["nv_inference_compute_output_duration_us"]) / requests / 1000,
            "client_latency_ms": float(flat.mean() * 1000) if len(flat) else 0.0}


def served_row(model_dir: str | Path, *, threads: int = 2, concurrencies: tuple[int, ...] = (1, 4, 8),
               seconds: float = 5.0, rounds: int = 3, queue_delay_us: int = 2000,
               log: Any = print) -> dict[str, Any]:
    """Served against local images per second at each concurrency, in one run (start-up excluded): ``seconds``
    per side and concurrency, in ``rounds`` alternating slices."""
    model_dir = Path(model_dir)
    http, grpc, metrics = _free_ports(3)
    options = ServeOptions(model_dir=model_dir, engine="ort-cpu", threads=threads, http_port=http, grpc_port=grpc,
                           metrics_port=metrics, max_batch_size=max(concurrencies), max_queue_delay_us=queue_delay_us)
    server = Server(options, log=lambda _: None)
    server.start()
    rows = []
    try:
        size = read_manifest(model_dir).config.img_size
        pixels = np.random.default_rng(0).integers(0, 256, (max(concurrencies), size, size, 3), dtype=np.uint8)
        for concurrency in concurrencies:
            # alternating slices: a machine whose load drifts (a shared one) slows both sides alike
            local_rates, served_rows = [], []
            for _ in range(rounds):
                local = _local(model_dir, pixels, concurrency, threads, seconds / rounds)
                local_rates.append(local["images_per_second"])
                served_rows.append(_served(model_dir, server, pixels, concurrency, seconds / rounds))
            served = {key: float(np.mean([r[key] for r in served_rows])) for key in served_rows[0]}
            served["errors"] = int(sum(r["errors"] for r in served_rows))
            row = {"concurrency": concurrency, "local_images_per_second": float(np.mean(local_rates)),
                   "served_images_per_second": served.pop("images_per_second"), **served,
                   "local_rounds": local_rates, "served_rounds": [r["images_per_second"] for r in served_rows]}
            row["served_over_local"] = row["served_images_per_second"] / row["local_images_per_second"]
            rows.append(row)
            log(f"  served c={concurrency}: {row['served_images_per_second']:.1f} img/s vs local "
                f"{row['local_images_per_second']:.1f} img/s ({row['served_over_local']:.2f}x), "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"{row['images_per_execution']:.2f} images per execution, {row['errors']} errors")
    finally:
        server.stop()
    return {"model_dir": str(model_dir), "engine": server.engine, "threads": threads, "seconds": seconds,
            "rounds": rounds,
            "queue_delay_us": queue_delay_us, "rows": rows}
