"""``--decode gpu``: JPEG batches decoded by NVIDIA nvImageCodec straight into GPU memory, resized there
(CV-CUDA) and fed to ONNX Runtime CUDA through IO binding, so the pixels never cross to the host.

Optional: the ``gpu-decode`` extra (``nvidia-nvimgcodec-cu13``, ``cvcuda-cu13``) and ``--engine
ort-cuda``. Without them, or without an NVIDIA GPU, ``check_gpu_decode`` is one clear
``BackendUnavailableError`` and nothing changes on the CPU path.

Written against nvImageCodec's and CV-CUDA's documented Python APIs (``Decoder(device_id=...)
.decode(list_of_bytes, params=DecodeParams(...), cuda_stream=...)`` -> device ``Image`` s with
``__cuda_array_interface__``; ``cvcuda.as_tensor(image, "HWC")``, ``cvcuda.resize``,
``cvcuda.stack``) and ORT's ``IOBinding.bind_input(..., buffer_ptr=...)``; it has not run on a GPU
in this repository yet (the GPU measurement belongs in ``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptcam.core.errors import BackendUnavailableError, ImageError
from promptcam.core.iospec import PIXELS

from .cuda import has_nvidia_driver

GPU_DECODE_HINT = "pip install 'promptcam[gpu-decode]' on a machine with an NVIDIA GPU, and run with --engine ort-cuda"
GPU_ENGINES = ("ort-cuda",)


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(f"--decode gpu: {what} is not installed ({exc}); {GPU_DECODE_HINT}") from exc


def check_gpu_decode(engine: str) -> None:
    """Whether ``--decode gpu`` can run here; checked before any model is loaded.

    Raises:
        BackendUnavailableError: the first thing missing (an engine that is not ORT CUDA, no NVIDIA
            driver, no CUDA provider in onnxruntime, nvImageCodec or CV-CUDA not installed).
    """
    if engine not in GPU_ENGINES:
        raise BackendUnavailableError(f"--decode gpu feeds ONNX Runtime CUDA through IO binding: use --engine "
                                      f"ort-cuda (not {engine!r})")
    if not has_nvidia_driver():
        raise BackendUnavailableError("--decode gpu: no NVIDIA driver (libcuda.so.1) on this machine; "
                                      "use --decode cpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendUnavailableError("--decode gpu: this onnxruntime build has no CUDAExecutionProvider")
    _import("nvidia.nvimgcodec", "nvImageCodec (nvidia-nvimgcodec-cu13)")
    _import("cvcuda", "CV-CUDA (cvcuda-cu13)")


@dataclass
class DeviceBatch:
    """Model-size pixels [B, S, S, 3] uint8 in GPU memory; ``Predictor.predict_pixels`` takes it in place of
    a NumPy batch and runs it through ``infer``.

    Attributes:
        tensor: The CV-CUDA tensor that owns the memory (kept alive until inference is done).
        shape: (B, S, S, 3).
        device_id: The GPU.
    """

    tensor: Any
    shape: tuple[int, int, int, int]
    device_id: int

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def data_ptr(self) -> int:
        return int(self.tensor.cuda().__cuda_array_interface__["data"][0])

    def infer(self, backend: Any, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The backend's session on these device pixels (IO binding: no host copy of the input).

        Raises:
            BackendUnavailableError: a backend that is not ORT on the same GPU.
        """
        session = getattr(backend, "session", None)
        if session is None or not getattr(backend, "on_gpu", False) or backend.device_id != self.device_id:
            raise BackendUnavailableError(f"--decode gpu needs ONNX Runtime CUDA on GPU {self.device_id} "
                                          f"(the backend is {getattr(backend, 'name', backend)})")
        binding = session.io_binding()
        binding.bind_input(name=PIXELS, device_type="cuda", device_id=self.device_id, element_type=np.uint8,
                           shape=self.shape, buffer_ptr=self.data_ptr)
        for name in outputs:
            binding.bind_output(name, "cpu")
        binding.synchronize_inputs()  # CV-CUDA wrote the pixels on its own stream
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))


class GpuDecoder:
    """Batch JPEG decoding and resizing on one GPU.

    Args:
        size: The model's square input size.
        interpolation: The model config's interpolation (``area`` when shrinking, as on the CPU).
        device_id: The GPU.
    """

    def __init__(self, size: int, interpolation: str = "bilinear", *, device_id: int = 0) -> None:
        self.nvimgcodec = _import("nvidia.nvimgcodec", "nvImageCodec (nvidia-nvimgcodec-cu13)")
        self.cvcuda = _import("cvcuda", "CV-CUDA (cvcuda-cu13)")
        self.size = size
        self.device_id = device_id
        self.decoder = self.nvimgcodec.Decoder(device_id=device_id)
        self.params = self.nvimgcodec.DecodeParams(apply_exif_orientation=True,
                                                   color_spec=self.nvimgcodec.ColorSpec.RGB)
        interp = self.cvcuda.Interp
        self.shrink = interp.AREA
        self.enlarge = interp.CUBIC if interpolation == "bicubic" else interp.LINEAR

    def decode_resized(self, datas: Sequence[bytes], names: Sequence[str]) -> tuple[DeviceBatch | None, list[Any]]:
        """Decode a batch on the GPU and resize each image to the model's input there.

        Returns:
            The device batch of the images that decoded (None if none did), and per input either its
            (height, width) or an ``ImageError`` naming the file.
        """
        images = self.decoder.decode(list(datas), params=self.params)
        tensors, results = [], []
        for image, name in zip(images, names, strict=True):
            if image is None:  # nvImageCodec returns None for a sample it could not decode
                results.append(ImageError(f"{name}: nvImageCodec cannot decode it (corrupt or unsupported)"))
                continue
            height, width = int(image.shape[0]), int(image.shape[1])
            src = self.cvcuda.as_tensor(image, "HWC")
            interp = self.shrink if height > self.size or width > self.size else self.enlarge
            tensors.append(self.cvcuda.resize(src, (self.size, self.size, 3), interp))
            results.append((height, width))
        if not tensors:
            return None, results
        stacked = self.cvcuda.stack(tensors)
        return DeviceBatch(stacked, (len(tensors), self.size, self.size, 3), self.device_id), results
