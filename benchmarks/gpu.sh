#!/usr/bin/env bash
# GPU benchmark: one prepared script for a machine with an NVIDIA GPU.
#
# Builds the TensorRT engine and runs every GPU backend side by side with eager PyTorch fp32 and
# the CPU backends, for a ViT-B/16 Prompt-CAM with C=200 (random weights: speed does not depend
# on them), at batch 1, 8 and 32. Results go to benchmarks/results/gpu/ (commit them).
#
#   INSTALL=1 bash benchmarks/gpu.sh      # also pip-installs the project with the export/bench/trt extras
#   CKPT=model.pt bash benchmarks/gpu.sh  # a real checkpoint instead
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
if [ "${INSTALL:-0}" = "1" ]; then
    python3 -m pip install -q -e '.[export,bench,trt]'
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
except ImportError as exc:
    print("tensorrt missing:", exc)
PY
args=(--batch 1,8,32 --iters 20 --warmup 3 --out "$OUT"
      --backends eager-official,ort-cuda-fp32,ort-cuda-fp16,trt-fp16,plain-vit,ort-cpu-fp32)
if [ -n "${CKPT:-}" ]; then args+=(--ckpt "$CKPT"); fi
promptcam-bench "${args[@]}"
# the engine must agree with ONNX Runtime before its numbers mean anything (FIELD-NOTES: DINO miscompiles)
python3 -m pytest -q -m gpu tests/export/test_tensorrt.py
