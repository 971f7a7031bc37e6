#!/usr/bin/env bash
# GPU check (issue 28), ready for the first lent GPU: under 8 minutes on one GPU, from a fresh
# clone and the package registry only. Prints, for resnet20-cifar, vgg11-cifar, vit-tiny-cifar
# and gpt-small: seconds per step, seconds per probe, Hessian products per probe, peak device
# memory measured beside the CPU-side prediction (XLA:CPU compiled memory analysis, `eoslab
# memory`), compile times; then `eoslab memory gpt-small` on the GPU itself, and the PyTorch
# side-by-side (benchmarks/bench_torch.py) where it exists.
#
# Usage (repository root):
#   bash benchmarks/gpu_check.sh              the GPU run: creates ./.venv-gpu, installs eoslab
#                                             and jax[cuda12] when nvidia-smi sees a GPU
#   bash benchmarks/gpu_check.sh --dry-run    the same steps with the -tiny presets on the CPU,
#                                             in the Python of $PYTHON (default .venv/bin/python,
#                                             else python3); installs nothing
# Env: EOSLAB_DATA (CIFAR-10 batches, text.txt; absent: synthetic stand-ins, and it says so),
#      GPT_N (gpt-small windows of 256 tokens, default 32), STEPS (timed steps, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
T0=$(date +%s)

if [ "$DRY" = 1 ]; then
  if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
  elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
  else PY=python3; fi
  export JAX_PLATFORMS=cpu
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  EOSLAB=("$PY" -m eoslab.cli)
  CHECK=(--dry-run)
  MEM_PRESET=gpt-small-tiny
  # a typo check, not a timing: a loaded 2-core CPU compiles the tiny presets in minutes
  CHECK_TIMEOUT="${CHECK_TIMEOUT:-3000}"; MEM_TIMEOUT="${MEM_TIMEOUT:-1500}"
  export PREDICT_TIMEOUT="${PREDICT_TIMEOUT:-1500}"
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv || true
  VENV=.venv-gpu
  if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e .
  if command -v nvidia-smi >/dev/null; then
    JAXV=$("$VENV/bin/python" -c "import jax; print(jax.__version__)")
    "$VENV/bin/python" -m pip install --quiet "jax[cuda12]==$JAXV"
  fi
  PY="$VENV/bin/python"
  EOSLAB=("$VENV/bin/eoslab")
  CHECK=(--steps "${STEPS:-20}")
  MEM_PRESET=gpt-small
  CHECK_TIMEOUT="${CHECK_TIMEOUT:-390}"; MEM_TIMEOUT="${MEM_TIMEOUT:-240}"
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_bytes_in_use is then what the run used
fi
"$PY" -c "import jax; print('jax', jax.__version__, 'backend', jax.default_backend())"
echo "setup: $(( $(date +%s) - T0 )) s"

# 1. per preset: s/step, s/probe, HVPs/probe, peak memory measured vs predicted, compile times
timeout "$CHECK_TIMEOUT" "$PY" benchmarks/gpu_check.py "${CHECK[@]}" --json "${GPU_CHECK_JSON:-/tmp/gpu_check.json}"

# 2. the memory table compiled for this machine's backend (compile only; on the GPU only with
#    MEMORY_ON_GPU=1: twenty GPT-2 compiles may not fit the 8 minutes)
if [ "$DRY" = 1 ] || [ "${MEMORY_ON_GPU:-0}" = 1 ]; then
  timeout "$MEM_TIMEOUT" "${EOSLAB[@]}" memory "$MEM_PRESET" --batch "${GPT_N:-8}" \
    || echo "eoslab memory $MEM_PRESET: failed or timed out"
fi

# 3. the PyTorch side-by-side, where it has landed
if [ -f benchmarks/bench_torch.py ]; then
  if [ "$DRY" = 1 ]; then
    timeout 60 "$PY" benchmarks/bench_torch.py --help >/dev/null && echo "bench_torch.py: present (--help ok)"
  else
    # PyHessian, hessian-eigenthings v1, curvlinops: the bench extra (torch models on cuda)
    "$PY" -m pip install --quiet -e '.[bench]' || echo "bench extra not installed (offline?)"
    timeout 120 "$PY" benchmarks/bench_torch.py --points 3 \
      --out benchmarks/results/torch-side-by-side-gpu.md || echo "bench_torch.py failed"
  fi
else
  echo "benchmarks/bench_torch.py not present: no PyTorch side-by-side"
fi
echo "gpu_check: $(( $(date +%s) - T0 )) s in all"
