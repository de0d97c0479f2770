#!/usr/bin/env bash
# One GPU session's worth of checks, for a GPU machine without internet access:
#   build fastops from source against the machine's torch, run the test suite (CUDA tests
#   included), run the benchmarks on CUDA, write everything into OUTDIR, print a summary last.
# Sized to finish within 7 minutes on one H200 with 16 cores.
#
#   bash bench/gpu_check.sh OUTDIR            # e.g. bash bench/gpu_check.sh "$OUT"
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default:
# all cores), GPU_CHECK_BENCH_ARGS (extra arguments for bench/run.py), GPU_CHECK_SKIP_BUILD=1
# (reuse an installed build).
set -uo pipefail
out="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
t0=$(date +%s)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # Triton kernels compile for the GPU here

stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
summary=()

stamp "machine" | tee "$out/machine.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  "$py" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1
  "$py" -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1; nproc; } >> "$out/machine.txt"
cat "$out/machine.txt"

# 1. Build from source against this machine's torch (no build isolation, no dependency installs).
if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  stamp "build (arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
  FASTOPS_PTXAS_VERBOSE=1 timeout 240 "$py" -m pip install --no-build-isolation --no-deps -v . >"$out/build.log" 2>&1
  rc=$?
  summary+=("build: rc=$rc ($(grep -c 'registers' "$out/build.log") ptxas reports)")
  grep -E "ptxas info *: (Used|Compiling)" "$out/build.log" > "$out/ptxas.txt" 2>/dev/null
  if [ $rc -ne 0 ]; then tail -40 "$out/build.log"; fi
fi
(cd /tmp && "$py" -c "import fastops, torch; print('extension', fastops.has_extension(), 'cuda kernels', fastops.has_cuda_kernels(), 'gpu', torch.cuda.is_available())") 2>&1 | tee -a "$out/machine.txt"

# 2. Tests: the whole suite; here the CUDA-marked tests run and the Triton tests use the GPU.
stamp "tests"
# (run from tests/: `python -m pytest` at the root would import the source tree, not the build)
(cd tests && timeout 200 "$py" -m pytest . -q -rs -p no:cacheprovider --junitxml="$out/tests.xml") \
  >"$out/tests.log" 2>&1
rc=$?
summary+=("tests: rc=$rc $(tail -1 "$out/tests.log")")
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -20

# 3. Benchmarks on CUDA: fp16 / bf16 / fp32, channels_last, every backend.
stamp "benchmarks"
# shellcheck disable=SC2086
timeout 150 "$py" bench/run.py --device cuda --backends triton cuda --no-plots --out "$out/bench-cuda.json" ${GPU_CHECK_BENCH_ARGS:-} >"$out/bench.log" 2>&1
rc=$?
summary+=("bench: rc=$rc -> bench-cuda.json")

stamp "done"
echo "================ gpu_check summary ================"
printf '%s\n' "${summary[@]}"
tail -25 "$out/bench.log"
