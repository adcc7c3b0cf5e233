#!/usr/bin/env bash
# The GPU check: one command for a CUDA machine without network access. Runs the GPU tests
# (tests/gpu, marked `gpu`, skipped without CUDA) and the benchmark suite, and writes every
# log and result into OUT_DIR (JSON + markdown named after the GPU).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [benchmark options, e.g. --repeats 10]
#
# Needs python3 with torch (CUDA), torchvision, onnxruntime, OpenCV, numpy, pytest, pyyaml.
# Packages missing there (pydantic, paho-mqtt) can come as wheels in $WHEELS (default
# .whl): they are installed into a private folder, nothing from the network. Set
# MARROW_COMMIT to the commit being measured when the tree was copied without its .git.
set -uo pipefail

out=${1:?usage: gpu_check.sh OUT_DIR [benchmark options]}
shift
wheels=${WHEELS:-.whl}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$root"
if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/marrow-site "$wheels"/*.whl || exit 1
    export PYTHONPATH="$root:/tmp/marrow-site"
fi

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    python3 - <<'EOF'
import platform, torch, torchvision, onnxruntime, numpy
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "torchvision", torchvision.__version__,
      "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers(), "numpy", numpy.__version__)
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("tensorrt", "cuda"):
    try:
        __import__(name)
        print(name, "importable")
    except ImportError as exc:
        print(name, "not importable:", exc)
EOF
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

tag=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else 'cpu')")

echo "== GPU tests"
# shellcheck disable=SC2086  # GPU_TESTS is a list of paths
timeout "${GPU_TEST_TIMEOUT:-240}" python3 -m pytest -q -rs -s -p no:cacheprovider \
    ${GPU_TESTS:-tests/gpu tests/unit/analysis} 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmark"
# ONNX Runtime on the CPU is left out for paper: exporting its 550 MB graph costs minutes of the
# GPU lease and the CPU figures come from the CPU runs (benchmarks/results).
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/pipeline.py --out "$out" --tag "$tag" \
    --skip onnxruntime-cpu:paper "$@" 2>&1 | tail -n 400 > "$out/benchmark.log"
bench_rc=${PIPESTATUS[0]}
tail -n 60 "$out/benchmark.log"

echo "== a 2448x2048 field at the bundle's scale, in tiles (issue 46), on the fused CUDA path"
timeout "${SCALE_TIMEOUT:-120}" python3 benchmarks/scale.py --engine torch-cuda --fields 6 --out "$out" \
    --tag "$tag" 2>&1 | tail -n 20 | tee "$out/scale.log"
scale_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc benchmark rc=$bench_rc scale rc=$scale_rc"
exit $(( tests_rc != 0 || bench_rc != 0 || scale_rc != 0 ))
