"""A backend that sends the pixels to a Triton server (``promptcam serve``) and receives the graph's outputs.

The station decodes and resizes locally, as for a local engine; the server runs the model. Everything
above the backend (Predictor, records, heatmaps, the station) is unchanged, so a served result is a
local one. ``tritonclient`` is imported only when a server is given (``serve`` or ``triton-client`` extra).

A server that cannot be reached (refused, reset, gRPC UNAVAILABLE, a timeout) is retried with backoff
for ``wait`` seconds, then ``ServerUnavailableError``: the caller still holds the batch (the station keeps
the photos in its inbox, ``promptcam run --resume`` continues). A request the server rejects is a
``BackendUnavailableError`` at once: retrying it would not help.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from promptcam.core.errors import BackendUnavailableError, ServerUnavailableError
from promptcam.core.iospec import FULL_OUTPUTS, PIXELS
from promptcam.core.manifest import METADATA_KEY

from .base import Backend, LoadedTensors

SERVED_MODEL = "promptcam"
# Triton's data types -> the numpy names iospec uses
TRITON_DTYPES = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32", "TYPE_INT64": "int64", "TYPE_FP16": "float16",
                 "UINT8": "uint8", "FP32": "float32", "INT64": "int64", "FP16": "float16"}
# what a lost server looks like through either protocol (HTTP: the socket errors; gRPC: these statuses)
RETRY_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")
LOST_SIGNS = ("failed to connect", "unknown model", "is not ready", "no available versions", "server is stopping")


def parse_server_url(url: str) -> tuple[str, str]:
    """``http://host:port``, ``grpc://host:port`` or ``host:port`` (HTTP) -> (protocol, ``host:port``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc") or not parts.hostname or parts.path not in ("", "/"):
        raise BackendUnavailableError(f"--server {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port or (8000 if parts.scheme == "http" else 8001)
    except ValueError:
        raise BackendUnavailableError(f"--server {url!r}: the port is not a number") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the server is (for now) gone, not that it refused the request."""
    if isinstance(exc, OSError | TimeoutError | http.client.HTTPException):  # refused, reset, closed mid-answer
        return True
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    text = str(exc).lower()
    # a draining or restarting server has no ready model for a moment: retried like a lost one
    return str(status) in RETRY_STATUSES or any(sign in text for sign in LOST_SIGNS)


class TritonClientBackend(Backend):
    """The graph of a model served by ``promptcam serve`` (or any Triton server with its config).

    Args:
        url: ``http://HOST:PORT`` or ``grpc://HOST:PORT``.
        wait: Seconds a lost server is retried (with backoff) before ``ServerUnavailableError``.
        timeout: Seconds one request may take.
        sleep: The pause between retries (a test passes a fast one).
    """

    name = "server"
    carries_metadata = True

    def __init__(self, url: str, *, wait: float = 60.0, timeout: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.protocol, self.address = parse_server_url(url)
        self.url = f"{self.protocol}://{self.address}"
        self.wait, self.timeout, self._sleep = wait, timeout, sleep
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
        except ImportError as exc:
            raise BackendUnavailableError(
                f"--server needs tritonclient: pip install 'promptcam[serve]' ({exc})") from exc
        self._module: Any = client_module
        self._client: Any = None
        config = self._retrying(lambda c: self._config_of(c))
        self._config = config
        self.max_batch = int(config.get("max_batch_size", 0)) or None
        self.output_names = tuple(o["name"] for o in config.get("output", ()))
        self._reshaped = {o["name"] for o in config.get("output", ()) if "reshape" in o}
        self.description = f"Triton server {self.url}, model {SERVED_MODEL!r}"

    def _config_of(self, client: Any) -> dict[str, Any]:
        if self.protocol == "grpc":
            return client.get_model_config(SERVED_MODEL, as_json=True)["config"]
        return client.get_model_config(SERVED_MODEL)

    def _connect(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                self._client = self._module.InferenceServerClient(self.address)
            else:
                self._client = self._module.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                                                  network_timeout=self.timeout)
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                pass

    def _retrying(self, call: Callable[[Any], Any]) -> Any:
        """``call(client)``; a lost server is retried with backoff (0.25 s doubling, at most 5 s) for ``wait`` s."""
        deadline = time.monotonic() + self.wait
        pause = 0.25
        while True:
            try:
                return call(self._connect())
            except Exception as exc:  # noqa: BLE001 - tritonclient and its transports raise many types
                if not _lost(exc):
                    raise BackendUnavailableError(f"{self.url}: the server refused the request: {exc}") from exc
                self._drop_client()  # a new connection after a restart
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerUnavailableError(
                        f"{self.url}: the server did not answer for {self.wait:g} s ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); the images of this batch are not lost") from exc
                self._sleep(min(pause, left))
                pause = min(pause * 2, 5.0)

    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = FULL_OUTPUTS) -> dict[str, np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)

        def call(client: Any) -> dict[str, np.ndarray]:
            request = self._module.InferInput(PIXELS, list(pixels.shape), "UINT8")
            if self.protocol == "grpc":
                request.set_data_from_numpy(pixels)
                wanted = [self._module.InferRequestedOutput(name) for name in outputs]
                result = client.infer(SERVED_MODEL, [request], outputs=wanted, client_timeout=self.timeout)
            else:
                request.set_data_from_numpy(pixels, binary_data=True)
                wanted = [self._module.InferRequestedOutput(name, binary_data=True) for name in outputs]
                result = client.infer(SERVED_MODEL, [request], outputs=wanted)
            got = {name: result.as_numpy(name) for name in outputs}
            # Triton shows a per-image scalar (top_class) as [B, 1]; the graph's shape is [B]
            return {name: a.reshape(len(pixels)) if name in self._reshaped else a for name, a in got.items()}

        return self._retrying(call)

    def tensors(self) -> LoadedTensors:
        """The served tensors as the graph has them: Triton's dims with the batch dimension put back."""
        batch = "batch" if self.max_batch else None
        found: LoadedTensors = {}
        for entry in (*self._config.get("input", ()), *self._config.get("output", ())):
            # gRPC's JSON leaves an empty reshape as {} (and writes int64 dims as strings)
            dims = entry["reshape"].get("shape", ()) if "reshape" in entry else entry.get("dims", ())
            dims = [int(d) for d in dims]
            shape = tuple(None if d < 0 else d for d in dims)
            found[entry["name"]] = (TRITON_DTYPES.get(entry.get("data_type", ""), entry.get("data_type", "")),
                                    ((batch,) if batch else ()) + shape)
        return found

    def metadata(self) -> str | None:
        """The manifest the server loaded (a config parameter), to compare with the local one."""
        value = (self._config.get("parameters") or {}).get(METADATA_KEY, {}).get("string_value")
        return value if isinstance(value, str) else None

    def close(self) -> None:
        self._drop_client()

