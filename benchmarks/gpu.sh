#!/usr/bin/env bash
# GPU benchmark: one prepared script for a machine with an NVIDIA GPU (budget: under 8 minutes on an H200).
#
# Parts (PARTS=tests,bench,profile,decode; each writes OUT/<part>.log and, when it succeeds,
# OUT/<part>.done; a rerun skips finished parts unless FORCE=1, so rerun after a failure redoes only it):
#   tests    the GPU tests (ORT CUDA against ORT CPU; the TensorRT engine against ORT when TensorRT is there)
#   bench    promptcam-bench: ViT-B/16 Prompt-CAM, C=200 (random weights: speed does not depend on them);
#            ORT CUDA rows at batch 1,8,32,64,128,256 (fp32, fp16, fp16 + CUDA graphs, fp16 outputs on the
#            device), PyTorch rows (fp32 eager, autocast fp16 + SDPA, the same under torch.compile) at 1,8,32
#   profile  one ORT CUDA fp16 profile at batch 128, by op type: OUT/ort_profile_b128.md/json
#   decode   promptcam-run on a generated JPEG folder with --decode cpu and --decode gpu: OUT/decode.json
# Results go to OUT (default benchmarks/results/gpu/; commit them). Exports are kept in WORK between parts.
# TensorRT has never run on record in this project: the trt-fp16 row is skipped with its reason where
# TensorRT is missing, and no TensorRT figure may be quoted from a run that did not produce a trt-fp16 row.
#
#   bash benchmarks/gpu.sh                 # the project is installed: pip install -e '.[export,bench,trt]'
#   PARTS=profile bash benchmarks/gpu.sh   # only the profile (e.g. after it failed)
#   INSTALL=1 bash benchmarks/gpu.sh       # pip-install it (and the extras) from the package index first
#   OFFLINE=1 WHEELS=dir bash benchmarks/gpu.sh
#       # a GPU box with no package index that already has torch, timm, onnx, click, psutil,
#       # matplotlib and OpenCV: put this source tree on the path, write the console scripts next
#       # to python3, and install the wheels in dir (onnxruntime-gpu, tensorrt ...) under /tmp/site
#   CKPT=model.pt bash benchmarks/gpu.sh   # a real checkpoint instead of random weights
#   BATCHES=1,8 EAGER_BATCHES=1 ITERS=20 BACKENDS=... QUICK=1 DECODE_IMAGES=256 PROFILE_BATCH=128
#       # fewer measurements / another backend list / a tiny model / a smaller folder
#   PEER_DEVICE=cpu COMPILE_BACKEND=eager PROFILE_BACKEND=ort-cpu-fp32
#       # without a GPU: the peers' code path in bfloat16 on the CPU, torch.compile plumbing only, a CPU profile
#   DRY_RUN=1                              # print each part's commands instead of running them
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
WORK=${WORK:-${TMPDIR:-/tmp}/promptcam-gpu-work}
PARTS=${PARTS:-tests,bench,profile,decode}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

if [ "${INSTALL:-0}" = "1" ]; then
    python3 -m pip install -q -e '.[export,bench,trt]' || exit 1
fi
if [ "${OFFLINE:-0}" = "1" ]; then
    if compgen -G "${WHEELS:-.whl}/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "${WHEELS:-.whl}"/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    # a src layout: the source tree imports as it is
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    python3 - <<'PY' || exit 1
import sys, tomllib
from pathlib import Path

scripts = tomllib.loads(Path("pyproject.toml").read_text())["project"]["scripts"]
for name, target in scripts.items():  # the tests run console scripts from python3's folder
    module, func = target.split(":")
    path = Path(sys.executable).parent / name
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    path.chmod(0o755)
print(f"offline install: {len(scripts)} console scripts in {Path(sys.executable).parent}")
PY
    # CUDA/cuDNN of the nvidia-* wheels, for ORT's CUDA provider (preload_dlls finds most of them)
    libs=$(python3 -c "import site, glob; print(':'.join(sorted({p for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/lib', recursive=True)})))")
    export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

[ "$DRY_RUN" = "1" ] || {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    python3 - <<'PY'
import onnxruntime as ort, torch
print("python torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.get_available_providers())
try:
    import tensorrt
    print("tensorrt", tensorrt.__version__)
except ImportError as exc:
    print("tensorrt missing:", exc)
PY
} 2>&1 | tee "$OUT/env.txt"


# run: echo the command (DRY_RUN: only that), else run it
run() {
    echo "+ $*"
    if [ "$DRY_RUN" = "1" ]; then return 0; fi
    "$@"
}

# part NAME FUNCTION: run FUNCTION with its output in OUT/NAME.log unless it is not wanted or already done
failed=()
part() {
    local name=$1 fn=$2
    case ",$PARTS," in *",$name,"*) ;; *) return 0 ;; esac
    if [ -f "$OUT/$name.done" ] && [ "${FORCE:-0}" != "1" ]; then
        echo "== $name: done before ($OUT/$name.done); FORCE=1 redoes it"
        return 0
    fi
    if [ "$DRY_RUN" != "1" ]; then rm -f "$OUT/$name.done"; fi
    echo "== $name"
    local start=$SECONDS
    "$fn" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
    if [ "$rc" = 0 ] && [ "$DRY_RUN" != "1" ]; then date -u +%FT%TZ >"$OUT/$name.done"; fi
    if [ "$rc" != 0 ]; then failed+=("$name"); fi
}

common=(--warmup "${WARMUP:-5}" --work "$WORK" --peer-device "${PEER_DEVICE:-cuda}"
        --compile-backend "${COMPILE_BACKEND:-inductor}")
if [ -n "${CKPT:-}" ]; then common+=(--ckpt "$CKPT"); fi
if [ "${QUICK:-0}" = "1" ]; then common+=(--quick); fi  # a tiny model: checks this script in seconds

# correctness first: a GPU engine's numbers mean nothing until it agrees with ORT on the CPU
# (FIELD-NOTES: DINO-family ViTs have been miscompiled by specific TensorRT versions)
# (test_predictor: every engine name starts or says why, on a machine that has a GPU)
tests_part() {
    run timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -k "not trained" \
        tests/runtime/test_ort_cuda.py tests/export/test_tensorrt.py tests/runtime/test_predictor.py \
        tests/benchmarks/test_peers.py tests/benchmarks/test_ort_bound.py
}

bench_part() {
    run timeout "${BENCH_TIMEOUT:-420}" promptcam-bench "${common[@]}" --out "$OUT" \
        --batch-size "${BATCHES:-1,8,32,64,128,256}" --eager-batch "${EAGER_BATCHES:-1,8,32}" --iters "${ITERS:-30}" \
        --e2e-images "${E2E_IMAGES:-2048}" --real-scale-backends "${REAL_SCALE_BACKENDS:-ort-cuda-fp16}" \
        --backends "${BACKENDS:-eager-official,eager,eager-fp16,eager-compile-fp16,ort-cuda-fp32,ort-cuda-fp16,ort-cuda-fp16-graph,ort-cuda-fp16-device,trt-fp16,plain-vit-cuda}"
}

profile_part() {
    local batch=${PROFILE_BATCH:-128}
    run timeout "${PROFILE_TIMEOUT:-180}" promptcam-bench "${common[@]}" --out "$OUT/profile_run" \
        --batch-size "$batch" --iters 3 --e2e-images 0 --no-real-scale --profile-batch "$batch" \
        --backends "${PROFILE_BACKEND:-ort-cuda-fp16}" || return 1
    [ "$DRY_RUN" = "1" ] && return 0
    if [ ! -f "$OUT/profile_run/ort_profile_b$batch.md" ]; then
        echo "no profile written: $(grep -A1 'ORT profile' "$OUT/profile_run/bench.md" | tail -1)"
        return 1
    fi
    cp "$OUT/profile_run/ort_profile_b$batch.md" "$OUT/profile_run/ort_profile_b$batch.json" "$OUT/"
}

decode_part() {
    if ! promptcam-run --help | grep -q -- '--decode'; then
        echo "skip: this promptcam-run has no --decode option"
        return 0
    fi
    local model=${DECODE_MODEL:-$(ls -td "$WORK"/*/export-fp16 2>/dev/null | head -1)}
    if [ -z "$model" ] && [ "$DRY_RUN" = "1" ]; then model="$WORK/<weights>/export-fp16"; fi
    if [ -z "$model" ]; then
        echo "no fp16 export in $WORK (run the bench part first, or set DECODE_MODEL)"
        return 1
    fi
    local images="$WORK/decode_images" n=${DECODE_IMAGES:-2048}
    run python3 - "$images" "$n" <<'PY' || return 1
import sys
from pathlib import Path

import cv2
import numpy as np

folder, count = Path(sys.argv[1]), int(sys.argv[2])
folder.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(count):  # camera-sized smooth JPEGs, as promptcam-bench's end-to-end folder
    path = folder / f"{i:05d}.jpg"
    if not path.exists():
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(str(path), cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC))
print(f"{count} JPEGs in {folder}")
PY
    local decode rc=0 timings=()
    for decode in cpu gpu; do
        local start=$EPOCHREALTIME
        run promptcam-run --model "$model" --engine "${DECODE_ENGINE:-ort-cuda}" --batch-size "${DECODE_BATCH:-64}" \
            --decode "$decode" --workers "$(nproc)" --no-progress --overwrite --out "$WORK/decode_out_$decode" \
            "$images" || { rc=1; continue; }
        timings+=("$decode=$(python3 -c "print($EPOCHREALTIME - $start)")")
    done
    [ "$DRY_RUN" = "1" ] && return 0
    python3 - "$OUT/decode.json" "$n" "$model" "${timings[@]}" <<'PY'
import json
import sys

out, count, model, *timings = sys.argv[1:]
result = {"images": int(count), "model": model, "note": "wall time of promptcam-run, model load included"}
for item in timings:
    decode, seconds = item.split("=")
    result[decode] = {"wall_s": float(seconds), "images_per_second": int(count) / float(seconds)}
print(json.dumps(result, indent=1))
open(out, "w").write(json.dumps(result, indent=1) + "\n")
PY
    return $rc
}

part tests tests_part
part bench bench_part
part profile profile_part
part decode decode_part
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed parts: ${failed[*]} (rerun: PARTS=$(IFS=,; echo "${failed[*]}") bash $0)"
    exit 1
fi
echo "all parts done: $PARTS"
