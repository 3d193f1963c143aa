"""``promptcam serve``: Triton Inference Server running an exported model, until SIGTERM.

The server process is ``tritonserver`` from the ``nvidia-pytriton`` wheel; this process prepares its
workspace, starts it, waits until the model is READY (loaded and through the manifest checks), says so
with the endpoints, and on SIGTERM / SIGINT drains: it unloads the model through Triton's repository API,
which lets the requests in flight finish and refuses new ones (clients retry them elsewhere or later), then
stops Triton. (Triton's own SIGTERM keeps serving while any client holds a connection open, up to its exit
timeout, and then exits with an error: a station's idle keep-alive connection would hold it.)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from promptcam.core.atomic import file_sha256
from promptcam.core.errors import PromptCamError
from promptcam.core.manifest import read_manifest
from promptcam.runtime.backends.served import SERVED_MODEL

from .repository import find_distribution, server_environment, write_backend_folder, write_model_repository

# CPU-only machines: Triton reports the absent GPU tooling on every start; not worth a user's attention
NOISE = ("Failed to initialize NVML", "CudaDriverHelper has not been initialized", "DCGM unable to start",
         "Unable to get number of CUDA devices", "CUDA driver version is insufficient")


@dataclass(frozen=True)
class ServeOptions:
    """``promptcam serve``'s settings; the defaults are the CLI's."""

    model_dir: Path
    engine: str = "auto"
    threads: int | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    drain_seconds: int = 30
    start_timeout: float = 300.0
    verbose: bool = False

    def endpoints(self) -> dict[str, str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {"HTTP": f"http://{host}:{self.http_port}", "gRPC": f"grpc://{host}:{self.grpc_port}",
                "metrics": f"http://{host}:{self.metrics_port}/metrics"}

    def local_http(self) -> str:
        """Where this machine reaches the HTTP endpoint (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.endpoints()["HTTP"][7:].rsplit(":", 1)[0])
        return f"http://{host}:{self.http_port}"


def _server_args(options: ServeOptions, binary: Path, repo: Path, backends: Path) -> list[str]:
    return [str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--http-address={options.host}", f"--grpc-address={options.host}", f"--metrics-address={options.host}",
            f"--http-port={options.http_port}", f"--grpc-port={options.grpc_port}",
            f"--metrics-port={options.metrics_port}", "--exit-timeout-secs=1",
            "--model-control-mode=explicit", f"--load-model={SERVED_MODEL}", "--strict-readiness=true",
            "--exit-on-error=true", "--allow-gpu-metrics=false",
            f"--log-info={'true' if options.verbose else 'false'}"]


def _child_setup() -> None:
    """In the child, before ``exec``: its own process group, so a terminal's Ctrl-C reaches ``promptcam serve``
    alone (which drains), and SIGKILL when ``promptcam serve`` dies, so a killed parent leaves no server."""
    import ctypes
    import os

    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Server:
    """A running ``tritonserver`` for one model folder (``start``, ``wait``, ``stop``)."""

    def __init__(self, options: ServeOptions, log: Callable[[str], None] = print) -> None:
        self.options, self.log = options, log
        self.process: subprocess.Popen[bytes] | None = None
        self.workspace: Path | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self.engine = ""

    def start(self) -> None:
        """Start Triton and return once the model is READY; a model that does not load is one error."""
        options = self.options
        manifest = read_manifest(options.model_dir)  # a broken folder is one line, before any server starts
        model_file = manifest.file(options.model_dir, "model")
        sha = file_sha256(model_file)
        dist = find_distribution()
        self.workspace = Path(tempfile.mkdtemp(prefix="promptcam-serve-"))
        status_file = self.workspace / "loaded.json"
        repo = write_model_repository(self.workspace / "models", options.model_dir, manifest, engine=options.engine,
                                      threads=options.threads, max_batch_size=options.max_batch_size,
                                      max_queue_delay_us=options.max_queue_delay_us, status_file=status_file)
        backends = write_backend_folder(dist, self.workspace / "backends")
        self.process = subprocess.Popen(_server_args(options, dist.binary, repo, backends),
                                        env=server_environment(dist), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        threading.Thread(target=self._relay, args=(self.process.stdout,), daemon=True).start()
        self._wait_ready()
        self.engine = json.loads(status_file.read_text())["engine"]
        endpoints = "  ".join(f"{k} {v}" for k, v in options.endpoints().items())
        self.log(f"serving {options.model_dir} as {SERVED_MODEL!r}: {model_file.name} sha256 {sha}, "
                 f"engine {self.engine}")
        self.log(f"  {endpoints}")
        self.log(f"  dynamic batching: up to {options.max_batch_size} images, queue delay "
                 f"{options.max_queue_delay_us} us; ready (SIGTERM drains the requests in flight)")

    def _relay(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip()
            if not line.strip(" |+-"):
                continue
            self.tail.append(line)
            if self.options.verbose or not any(noise in line for noise in NOISE):
                self.log(line)

    def _wait_ready(self) -> None:
        url = f"{self.options.local_http()}/v2/models/{SERVED_MODEL}/ready"
        deadline = time.monotonic() + self.options.start_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)  # the relay thread's last lines
                reasons = [line for line in self.tail if "failed" in line.lower() or "error" in line.lower()
                           and not any(noise in line for noise in NOISE)]
                self.cleanup()
                raise PromptCamError(f"{self.options.model_dir}: the server stopped before the model was ready "
                                     f"(exit code {self.process.returncode}):\n  " + "\n  ".join(reasons[-6:]))
            try:
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PromptCamError(f"the server was not ready within {self.options.start_timeout:g} s")

    def drain(self) -> bool:
        """Unload the model: the requests in flight finish, new ones are refused. True once it is unloaded."""
        base = self.options.local_http()
        deadline = time.monotonic() + self.options.drain_seconds
        try:
            unload = urllib.request.Request(f"{base}/v2/repository/models/{SERVED_MODEL}/unload", data=b"{}",
                                            method="POST")
            urllib.request.urlopen(unload, timeout=max(1.0, self.options.drain_seconds)).close()  # noqa: S310
        except (urllib.error.URLError, OSError):
            return False
        while time.monotonic() < deadline and self.process is not None and self.process.poll() is None:
            index = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(index, timeout=2) as response:  # noqa: S310 - our own loopback URL
                    states = {m.get("name"): m.get("state") for m in json.loads(response.read())}
            except (urllib.error.URLError, OSError, ValueError):
                return False
            if states.get(SERVED_MODEL) not in ("READY", "UNLOADING", "LOADING"):
                return True
            time.sleep(0.05)
        return False

    def stop(self, *, drain: bool = True) -> int:
        """Drain (unless ``drain=False``), stop Triton, remove the workspace; returns 0 after a clean drain."""
        drained = True
        if self.process is not None and self.process.poll() is None:
            drained = self.drain() if drain else False
            # nothing is in flight now; idle keep-alive connections would only hold Triton's exit timeout
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.cleanup()
        return 0 if drained else (self.process.returncode if self.process is not None else 1) or 1

    def cleanup(self) -> None:
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None


def serve(options: ServeOptions, log: Callable[[str], None] = print) -> int:
    """Run the server until SIGTERM or SIGINT; returns Triton's exit code."""
    server = Server(options, log)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            log(f"{signal.Signals(signum).name}: draining the requests in flight, then stopping")
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        server.start()
        while not stopping.is_set() and server.process is not None and server.process.poll() is None:
            stopping.wait(0.2)
        if not stopping.is_set():
            code = server.process.returncode if server.process is not None else 1
            log(f"the server exited on its own (code {code})")
            return code or 1
        started = time.monotonic()
        code = server.stop()
        log(f"drained and stopped in {time.monotonic() - started:.1f} s" if code == 0 else
            f"stopped without a clean drain (code {code}: the requests in flight took over "
            f"{options.drain_seconds} s, or Triton failed)")
        return code
    finally:
        server.stop(drain=False)
