"""The model Triton runs: ``TritonPythonModel`` for Triton's Python backend, inside its stub process.

It loads the model folder with the runtime's ``Predictor`` (so the manifest checks of a local run hold:
the model is READY only once they pass) and runs each dynamic batch of requests as one backend call.

Tensors cross the stub through DLPack, never through its NumPy converter: the stub bundled with
nvidia-pytriton 0.7 is built with pybind11 2.10, which reads NumPy 2 arrays with an item size of 0 (empty
outputs, aliased inputs; triton-inference-server/python_backend#384). PyTriton's own proxy passes
arrays that way, which is why ``promptcam serve`` binds the model to Triton itself.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.atomic import atomic_write_text
from promptcam.core.iospec import PIXELS, TOP_CLASS

# NumPy 1 (what pip picks for the serve extra alone: the wheel pins numpy<2) crosses the stub through its own
# converter, which reads NumPy 1 arrays right; NumPy 2 needs DLPack (module docstring)
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2

# the model's parameters in config.pbtxt (written by ``serving.repository``)
MODEL_DIR, ENGINE, THREADS, STATUS_FILE, PYTHON = ("promptcam.model_dir", "promptcam.engine_request",
                                                  "promptcam.threads", "promptcam.status_file", "promptcam.python")


def _quiet_capsule_warning(hook: Any) -> Any:
    """The stub renames a consumed DLPack capsule in a way NumPy 2's capsule destructor does not expect, which
    prints an "unraisable" ValueError per output (the memory is freed: measured flat over 1,500 requests).
    Only that one message is dropped."""

    def quiet(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, ValueError)
                and "PyCapsule_GetPointer called with incorrect name" in str(unraisable.exc_value)):
            hook(unraisable)

    return quiet


# a watcher process: SIGKILL to the stub once tritonserver is gone (a zombie counts as gone), and the
# workspace of a promptcam serve that could not remove it (killed) removed
WATCHER = """
import os, shutil, signal, sys, time
server, stub, workspace = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
while alive(stub):
    if not alive(server):
        os.kill(stub, signal.SIGKILL)
        shutil.rmtree(workspace, ignore_errors=True)
        break
    time.sleep(0.5)
"""


def _exit_with_server(python: str, workspace: Path) -> None:
    """Triton's stub outlives a killed ``tritonserver``: reparented, it ignores SIGTERM and keeps the model in
    memory. Neither a thread of its own (the stub waits in C++ holding the GIL) nor ``PR_SET_PDEATHSIG``
    (the thread that started it ends after the load) can end it, so a small process watches both."""
    import os
    import subprocess

    subprocess.Popen([python, "-c", WATCHER, str(os.getppid()), str(os.getpid()), str(workspace)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                     start_new_session=True)


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute`` (a list of requests), ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from promptcam.runtime.predictor import Predictor

        self.pb = pb_utils
        sys.unraisablehook = _quiet_capsule_warning(sys.unraisablehook)
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        _exit_with_server(parameters[PYTHON], Path(parameters[STATUS_FILE]).parent)
        threads = int(parameters[THREADS]) if parameters.get(THREADS) else None
        self.max_batch = int(config["max_batch_size"])
        started = time.perf_counter()
        self.predictor = Predictor(parameters[MODEL_DIR], parameters[ENGINE], batch_size=self.max_batch,
                                   threads=threads)
        self.backend = self.predictor.backend
        self.output_order = [o["name"] for o in config["output"]]
        status = {"engine": self.predictor.engine_description, "load_seconds": round(time.perf_counter() - started, 2)}
        if parameters.get(STATUS_FILE):
            atomic_write_text(Path(parameters[STATUS_FILE]), json.dumps(status))

    def execute(self, requests: list[Any]) -> list[Any]:
        """One dynamic batch: the requests' images stacked, one backend call, the outputs split back."""
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        batches, wanted = [], set()
        for i, request in enumerate(requests):
            tensor = pb.get_input_tensor_by_name(request, PIXELS)
            pixels = np.from_dlpack(tensor) if NUMPY_2 else tensor.as_numpy()
            if len(pixels) == 0:  # Triton passes a batch of 0 through; it has nothing to classify
                responses[i] = pb.InferenceResponse(error=pb.TritonError("a batch of 0 images: send 1 or more"))
                continue
            batches.append((i, pixels))
            wanted |= set(request.requested_output_names()) or set(self.output_order)
        if not batches:
            return responses
        names = [n for n in self.output_order if n in wanted]
        try:
            out = self.backend.infer(np.concatenate([p for _, p in batches]), names)
        except Exception as exc:  # noqa: BLE001 - one failed batch is an error response, the server stays up
            for i, _ in batches:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(f"inference failed: {exc}"))
            return responses
        start = 0
        for i, pixels in batches:
            end = start + len(pixels)
            asked = set(requests[i].requested_output_names()) or set(names)
            tensors = []
            for name in names:
                if name in asked:
                    part = np.ascontiguousarray(out[name][start:end])
                    if name == TOP_CLASS:
                        part = part.astype(np.int64)
                    tensors.append(pb.Tensor.from_dlpack(name, part) if NUMPY_2 else pb.Tensor(name, part))
            responses[i] = pb.InferenceResponse(output_tensors=tensors)
            start = end
        return responses

    def finalize(self) -> None:
        self.predictor.close()
