"""A real ``promptcam serve`` on 127.0.0.1 for the serving tests: free ports, started and stopped by id."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None,
    reason="needs the serve extra (nvidia-pytriton's Triton build and tritonclient): pip install -e '.[serve]'")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together, so they differ)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ServedModel:
    """``promptcam serve MODEL`` in its own process group; ``http``/``grpc`` are the client URLs."""

    def __init__(self, model: Path, *extra: object, ports: list[int] | None = None) -> None:
        self.model, self.extra = model, [str(e) for e in extra]
        self.ports = ports or free_ports(3)
        self.http, self.grpc = f"http://127.0.0.1:{self.ports[0]}", f"grpc://127.0.0.1:{self.ports[1]}"
        self.metrics = f"http://127.0.0.1:{self.ports[2]}/metrics"
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120) -> ServedModel:
        exe = Path(sys.executable).parent / "promptcam"
        args = [str(exe), "serve", str(self.model), "--host", "127.0.0.1", "--http-port", str(self.ports[0]),
                "--grpc-port", str(self.ports[1]), "--metrics-port", str(self.ports[2]), *self.extra]
        self.lines = []
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, env=dict(os.environ))
        threading.Thread(target=self._collect, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any("; ready" in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError("promptcam serve did not become ready:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)
        return self

    def _collect(self, process: subprocess.Popen[str]) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())

    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the drain) and wait; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def descendants(self) -> set[int]:
        """promptcam serve's processes below it (tritonserver, its Python stub), from /proc."""
        found, todo = set(), [self.process.pid] if self.process is not None else []
        while todo:
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    kids = {int(k) for k in children.read_text().split()}
                except OSError:
                    continue
                todo += kids - found
                found |= kids
        return found

    def kill(self) -> None:
        """SIGKILL to promptcam serve alone (a crash); tritonserver and its stub must follow it, bounded wait."""
        if self.process is not None and self.process.poll() is None:
            below = self.descendants()
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            deadline = time.monotonic() + 15
            while (alive := {p for p in below if _running(p)}) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive, f"left behind after promptcam serve was killed: {sorted(alive)}"
