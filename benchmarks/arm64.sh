#!/usr/bin/env bash
# The station runtime on aarch64 (a Raspberry Pi 5 / Jetson-class CPU), checked against x86_64, under qemu.
#
# From nothing: an arm64 Debian bookworm root file system with Debian's own python3 (3.11), cached in
# $PROMPTCAM_ARM64_CACHE (default ~/.cache/promptcam-arm64); promptcam's station install in a venv there
# (pip, offline, from aarch64 wheels fetched on this host; no torch); then, under qemu-user, the checks of
# docs/arm64.md: fp32 and int8 outputs against x86, the int8 gates with ARM's kernels (`promptcam
# validate-int8`), `promptcam watch --once` and `promptcam run --detections` against x86, what
# `import promptcam.runtime` pulls in, the installed size. The x86 side (the demo model, its exports and
# x86's outputs) runs on this host with the project's Python (PYTHON, default python3, with the train and
# export extras); PROMPTCAM_TEST_CACHE reuses a demo cache. Ends with one summary line
# (`arm64 PASSED key=value ...`) and OUT/arm64.json (default benchmarks/results/arm64/).
#
#   bash benchmarks/arm64.sh
#   PYTHON=.venv/bin/python PROMPTCAM_TEST_CACHE=/work/cache-demo bash benchmarks/arm64.sh
#   QEMU_CPU=max THREADS=1 OUT=/tmp/arm64 bash benchmarks/arm64.sh     # other emulated CPU features
#   STOP_AFTER=install bash benchmarks/arm64.sh                          # only the root file system and the install
#   CKPT=run/best.pt MODEL_NOTE="..." bash benchmarks/arm64.sh           # this checkpoint of the demo's architecture
#                                                                        # instead of the demo's trained model
#
# Needs root (chroot) and Debian's qemu-user-static and mmdebstrap (installed with apt-get when missing).
# Without binfmt_misc (containers) no arm64 program can exec another, so every arm64 command is started
# as `chroot ROOTFS qemu-aarch64-static /opt/promptcam/bin/python3 ...`, the venv is made --without-pip
# and pip bootstraps from Debian's own pip wheel: what `python3 -m venv` does, minus its subprocess.
# Emulated timings are never reported: qemu says nothing about a Pi's speed (docs/arm64.md has the estimate).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${PROMPTCAM_ARM64_CACHE:-$HOME/.cache/promptcam-arm64}
OUT=${OUT:-benchmarks/results/arm64}
PYTHON=${PYTHON:-python3}
DEMO_CACHE=${PROMPTCAM_TEST_CACHE:-$CACHE/demo}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
export QEMU_CPU=${QEMU_CPU:-cortex-a76}   # the Pi 5's core: NEON dot product, no i8mm, no SVE
THREADS=${THREADS:-2}
ROOTFS=$CACHE/rootfs-$SUITE
WORK=$ROOTFS/work               # /work inside the root file system; the host writes the x86 side there too
VENV=/opt/promptcam
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$CACHE" "$OUT"
started=$SECONDS
step() { echo "== $* ($((SECONDS - started)) s)"; }

# --- tools ------------------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null; then
    step "installing qemu-user-static and mmdebstrap"
    [ "$(id -u)" = 0 ] || { echo "run as root, or install qemu-user-static and mmdebstrap first"; exit 1; }
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static mmdebstrap
fi
[ "$(id -u)" = 0 ] || { echo "chroot needs root"; exit 1; }
CHROOT=$(command -v chroot)

# --- the arm64 root file system (cached) -------------------------------------------------------------
# python3 and venv as on Raspberry Pi OS; libstdc++6, which Raspberry Pi OS always has, for the wheels' C++ code
PACKAGES=python3,python3-venv,python3-pip-whl,python3-setuptools-whl,libstdc++6,ca-certificates
if [ "$(cat "$ROOTFS/.promptcam-rootfs" 2>/dev/null)" != "$SUITE $PACKAGES" ]; then
    step "building an arm64 Debian $SUITE root file system in $ROOTFS"
    rm -rf "$ROOTFS" "$ROOTFS.tar"
    # extract: unpack the packages and their dependencies without running maintainer scripts (no arm64 exec here)
    mmdebstrap --variant=extract --arch=arm64 --include="$PACKAGES" "$SUITE" "$ROOTFS.tar" "$MIRROR"
    mkdir -p "$ROOTFS" && tar -C "$ROOTFS" -xf "$ROOTFS.tar" && rm "$ROOTFS.tar"
    echo "$SUITE $PACKAGES" >"$ROOTFS/.promptcam-rootfs"
fi
cp /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/"
# What the runtime's CPU detection reads: a Pi 5's four Cortex-A76 (no /proc or /sys is mounted; the host's
# x86 /proc/cpuinfo would crash ARM's cpuinfo parser). The instruction set itself comes from QEMU_CPU.
mkdir -p "$ROOTFS/proc" "$ROOTFS/sys/devices/system/cpu" "$ROOTFS/tmp"
for f in possible present online; do echo "0-3" >"$ROOTFS/sys/devices/system/cpu/$f"; done
for i in 0 1 2 3; do mkdir -p "$ROOTFS/sys/devices/system/cpu/cpu$i"; done
for i in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"
done >"$ROOTFS/proc/cpuinfo"

# arm: run an arm64 program inside the root file system, with a clean environment
arm() {
    env -i PATH=$VENV/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" PYTHONUNBUFFERED=1 \
        "$CHROOT" "$ROOTFS" /usr/bin/qemu-aarch64-static "$@"
}
arm_promptcam() { arm $VENV/bin/python3 $VENV/bin/promptcam "$@"; }
x86_promptcam() { "$PYTHON" -c 'import sys; from promptcam.cli import main; sys.argv[0] = "promptcam"; main()' "$@"; }

# --- wheels: the aarch64 builds of the host's versions, so only the architecture differs ---------------
WHEELS=$CACHE/wheels
pins=$("$PYTHON" - <<'PY'
from importlib import metadata
pins = []
for dist, name in (("numpy", "numpy"), ("opencv-python-headless", "opencv-python-headless"), ("simplejpeg", "simplejpeg"),
                   ("click", "click"), ("tqdm", "tqdm"), ("watchdog", "watchdog"), ("onnxruntime-gpu", "onnxruntime"),
                   ("onnxruntime", "onnxruntime")):
    try:
        pin = f"{name}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        continue
    if not any(p.startswith(name + "==") for p in pins):
        pins.append(pin)
print(" ".join(pins))
PY
)
if [ "$(cat "$WHEELS/.pins" 2>/dev/null)" != "$pins" ]; then
    step "downloading aarch64 wheels: $pins"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --dest "$WHEELS" --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 $pins
    echo "$pins" >"$WHEELS/.pins"
fi
# promptcam itself: a wheel of this checkout's files (tracked and new, not ignored), built in a clean copy
step "building the promptcam wheel from this checkout"
src=$CACHE/src && rm -rf "$src" "$CACHE/dist" && mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src" 2>/dev/null || true
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$CACHE/dist" "$src" >/dev/null
rm -rf "$ROOTFS/tmp/wheels" && mkdir -p "$ROOTFS/tmp/wheels" && cp "$WHEELS"/*.whl "$CACHE"/dist/*.whl "$ROOTFS/tmp/wheels/"

# --- the station install, as on a Pi: a venv, pip, the runtime and the field extra ----------------------
step "installing promptcam[field] into $VENV on arm64 (pip under qemu)"
rm -rf "${ROOTFS:?}$VENV"
arm /usr/bin/python3 -m venv --without-pip $VENV
pip_wheel=$(cd "$ROOTFS" && ls usr/share/python-wheels/pip-*.whl | head -1)
arm $VENV/bin/python3 "/$pip_wheel/pip" install -q --no-index --no-compile "/$pip_wheel"
arm $VENV/bin/python3 -m pip install -q --no-index --find-links /tmp/wheels 'promptcam[field]'
arm $VENV/bin/python3 -m pip list --format=freeze >"$CACHE/arm_pip_list.txt"
footprint=$("$PYTHON" - "$ROOTFS" "$VENV" <<'PY'
import json, os, sys
from pathlib import Path

root, venv = Path(sys.argv[1]), sys.argv[2]
def size(path):
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            p = os.path.join(base, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total
site = next((root / venv.lstrip("/")).glob("lib/python3*/site-packages"))
parts = sorted(((size(p) if p.is_dir() else p.stat().st_size, p.name) for p in site.iterdir()), reverse=True)
mb = 1024 * 1024
print(json.dumps({"venv_mb": size(root / venv.lstrip("/")) / mb, "site_packages_mb": size(site) / mb,
                  "largest": {name: round(b / mb, 1) for b, name in parts[:10]},
                  "debian_python3_mb": (size(root / "usr/lib/python3.11") + sum(
                      p.stat().st_size for p in (root / "usr/lib/aarch64-linux-gnu").glob("libpython3.11*"))
                      + (root / "usr/bin/python3.11").stat().st_size) / mb,
                  "how": "bytes of regular files (apparent size) under the venv; pip itself is included",
                  "note": "Raspberry Pi OS ships python3; the venv is what promptcam adds"}))
PY
)
echo "footprint: $footprint"
if [ "${STOP_AFTER:-}" = install ]; then echo "STOP_AFTER=install: the arm64 station install is in $ROOTFS$VENV"; exit 0; fi

# --- the x86 side --------------------------------------------------------------------------------------
step "x86: demo model (cache $DEMO_CACHE), fp32 and int8 exports, held-out pixels, station inputs"
"$PYTHON" -m promptcam.benchmarks.arm64 prepare --demo-cache "$DEMO_CACHE" --work "$WORK" ${CKPT:+--ckpt "$CKPT"}

# station HOST_DIR DIR RUNNER: watch --once on a copy of the inbox, its MegaDetector export, run --detections;
# DIR is HOST_DIR as RUNNER sees it (inside the root file system for arm64)
station() {
    local host_dir=$1 dir=$2 runner=("${@:3}")
    rm -rf "$host_dir/station" && mkdir -p "$host_dir/station" && cp -rp "$WORK/station/inbox" "$host_dir/station/inbox"
    local w=${dir%/*}
    "${runner[@]}" watch "$dir/station/inbox" --model "$w/models/int8" --once --settle 0 --incomplete-wait 0 \
        --no-events --db "$dir/station/results.sqlite" --jsonl "$dir/station/watch_rows.jsonl" --traits 2 \
        --threads "$THREADS" --batch-size 8
    "${runner[@]}" export-results "$dir/station/results.sqlite" --format megadetector \
        -o "$dir/station/watch_megadetector.json" --model "$w/models/int8"
    "${runner[@]}" run --model "$w/models/int8" "$w/station/frames" --detections "$w/station/detections.json" \
        --out "$dir/station/run_det" --threads "$THREADS" --no-progress
    cp "$host_dir/station/run_det/results.json" "$host_dir/station/run_detections.json"
}

step "x86: outputs and station"
"$PYTHON" -m promptcam.benchmarks.arm64 outputs --work "$WORK" --threads "$THREADS"
station "$WORK/x86_64" "$WORK/x86_64" x86_promptcam

# --- the aarch64 side, under qemu -------------------------------------------------------------------------
step "aarch64: outputs of both graphs on $(python3 -c "import json; print(len(json.load(open('$WORK/heldout.json'))['images']))") held-out images"
arm $VENV/bin/python3 -m promptcam.benchmarks.arm64 outputs --work /work --threads "$THREADS"
step "aarch64: promptcam watch --once, export-results, run --detections"
station "$WORK/aarch64" /work/aarch64 arm_promptcam
step "aarch64: what import promptcam.runtime (and the station's modules) pull in"
imports=$(arm $VENV/bin/python3 - <<'PY'
import json, sys
import promptcam.runtime
after_runtime = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "onnx", "torchvision"})
from promptcam.runtime import Predictor  # noqa: F401 - loads onnxruntime
import promptcam.station.inbox, promptcam.cli.watch, promptcam.cli.run, promptcam.export.target  # noqa: E401,F401
after_station = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "onnx", "torchvision"})
from importlib import util
installed = sorted(n for n in ("torch", "timm", "onnx", "torchvision") if util.find_spec(n))
print(json.dumps({"runtime_pulls": after_runtime, "station_pulls": after_station, "installed": installed}))
PY
)
echo "imports: $imports"
step "aarch64: promptcam validate-int8 (the gates with ARM's kernels), then the load message"
rm -rf "$WORK/aarch64/int8-validated" && cp -r "$WORK/models/int8" "$WORK/aarch64/int8-validated"
arm_promptcam validate-int8 /work/aarch64/int8-validated --reference /work/models/fp32 --images /work/images/heldout \
    --threads "$THREADS" --batch-size 32 --json /work/aarch64/validate_int8.json || true
after=$(arm $VENV/bin/python3 -c "from promptcam.runtime import Predictor; Predictor('/work/aarch64/int8-validated', 'ort-cpu')" 2>&1 | grep -v '^$' || true)

# --- the report --------------------------------------------------------------------------------------------
step "report"
facts=$CACHE/facts.json
"$PYTHON" - "$facts" "$WORK" "$ROOTFS" "$footprint" "$imports" "$after" "$CACHE/arm_pip_list.txt" <<PY
import json, subprocess, sys
from pathlib import Path

out, work, rootfs, footprint, imports, after, pip_list = sys.argv[1:]
validate = Path(work) / "aarch64" / "validate_int8.json"
qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
facts = {
    "roots": {"x86_64": f"{work}/x86_64", "aarch64": "/work/aarch64", "x86_work": work, "aarch64_work": "/work"},
    "footprint": json.loads(footprint), "imports": json.loads(imports),
    "validate_int8": json.loads(validate.read_text()) if validate.is_file() else {"passed": False, "error": "no result"},
    "int8_load_message_after_validation": after, "model_note": """${MODEL_NOTE:-}""",
    "emulation": {"qemu": qemu, "qemu_cpu": "$QEMU_CPU", "rootfs": "Debian $SUITE arm64 (mmdebstrap --variant=extract)",
                  "how": "chroot ROOTFS qemu-aarch64-static /opt/promptcam/bin/python3 ... (no binfmt_misc)",
                  "threads": $THREADS, "arm_pip_freeze": Path(pip_list).read_text().split()},
}
Path(out).write_text(json.dumps(facts, indent=1))
PY
rm -rf "${OUT:?}/arm64.json" "$OUT/summary.txt"
set +e
"$PYTHON" -m promptcam.benchmarks.arm64 report --work "$WORK" --facts "$facts" --out "$OUT" | tee "$CACHE/report.log"
rc=${PIPESTATUS[0]}
echo "(done in $((SECONDS - started)) s; report $OUT/arm64.json)" >&2
exit "$rc"
