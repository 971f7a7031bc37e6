#!/usr/bin/env bash
# GPU check (issue 7): on a machine with an NVIDIA GPU, run the CIFAR VGG-11-AV preset for a few
# hundred full-batch GD steps with a warm sharpness probe at every step, and print the benchmark
# suite's table for it (GD step, HVP, certified lambda_1 cold/warm, probed step, FLOP rate vs the
# measured float32 matmul peak), then the sharpness-at-every-step table (bench_every_step.py),
# then the transformer preset at GPU size (TR_STEPS, TR_N to change it).
# Budget: under 15 minutes including the install.
#
# Usage (repository root):  bash benchmarks/gpu_check.sh [STEPS] [N_EXAMPLES]
#   ONLY=transformer bash benchmarks/gpu_check.sh   the transformer part alone (under 8 minutes)
# Uses ./.venv-gpu; creates it (system site packages, so a preinstalled CUDA jax is reused) and
# installs eoslab plus jax[cuda12] of the same version as the CPU venv when jax sees no GPU.
# Without network access, preinstall `jax[cuda12]` in the base Python first.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-300}"
N="${2:-5000}"
VENV=.venv-gpu
PY=python3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv || true
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet -e . || echo "pip install -e . failed (offline?)"
if ! "$VENV/bin/python" -c "import jax,sys; sys.exit(jax.default_backend()!='gpu')" 2>/dev/null; then
  JAXV=$("$VENV/bin/python" -c "import jax; print(jax.__version__)" 2>/dev/null || echo "")
  "$VENV/bin/python" -m pip install --quiet "jax[cuda12]${JAXV:+==$JAXV}" \
    || echo "could not install jax[cuda12] (offline?); running on $("$VENV/bin/python" -c 'import jax; print(jax.default_backend())')"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "${ONLY:-all}" != transformer ]; then
timeout 540 "$VENV/bin/python" - "$STEPS" "$N" <<'PYEOF'
import sys, time
sys.path.insert(0, "benchmarks")
import jax
import bench_suite as b
steps, n = int(sys.argv[1]), int(sys.argv[2])
print(f"backend {jax.default_backend()}, devices {jax.devices()}", flush=True)
t = time.time()
res = b.run(quick=False, workloads={"vgg11-av": n}, probe_steps=steps, scale=False)
w = res["workloads"]["vgg11-av"]["eoslab"]
print(b.to_markdown(res))
print(f"VGG-11-AV: {steps} probed GD steps at lr=1/lambda_1(w0); lambda_1 {w['lambda0']:.4g} -> "
      f"{w['lambda_end']:.4g}; warm HVPs median {w['warm_mv_median']:.0f} "
      f"(max {w['warm_mv_max']}); total {time.time() - t:.0f} s")
PYEOF
# the sharpness-at-every-step table (certified lambda_1 at each GD step vs the step alone)
timeout 300 "$VENV/bin/python" benchmarks/bench_every_step.py || echo "every-step benchmark failed"
fi
# the transformer preset at GPU size: 32,768 sorted sequences of 8 tokens out of 32 (T = 15),
# d_model 256, 8 heads, 4 layers (~3.2M parameters; about 40 GB of activations for an HVP),
# full-batch GD with the certified sharpness every 20 steps; prints wall time and the last rows.
TR_STEPS="${TR_STEPS:-100}"
TR_N="${TR_N:-32768}"
TR_OUT=$(mktemp -d /tmp/eoslab-transformer-XXXX)
T0=$(date +%s)
timeout 420 "$VENV/bin/eoslab" run transformer --problem.dataset sort-L8-V32 --problem.n "$TR_N" \
  --problem.model-options d_model 256 n_heads 8 n_layers 4 \
  --steps "$TR_STEPS" --probe-every 20 --quiet --no-plot --out "$TR_OUT/run" \
  || echo "transformer run failed"
echo "transformer: $TR_STEPS GD steps on $TR_N sequences in $(( $(date +%s) - T0 )) s (compiles included)"
"$VENV/bin/python" - "$TR_OUT/run" <<'PYEOF' || true
import sys
import eoslab
m = eoslab.load_run(sys.argv[1]).metrics
cols = [c for c in ("step", "loss", "grad_norm", "sharpness", "threshold", "accuracy") if c in m]
print(m[m["sharpness"].notna()][cols].to_string(index=False))
PYEOF

# --- PyTorch side by side (issue 26): eoslab's probe vs PyHessian, hessian-eigenthings v1 and
# curvlinops + eigsh on the GPU (torch models on cuda; needs `pip install -e '.[bench]'`).
if [ "${ONLY:-all}" = all ] || [ "${ONLY:-all}" = torch ]; then
  "$VENV/bin/python" -m pip install --quiet -e '.[bench]' || echo "bench extra not installed (offline?)"
  timeout 420 "$VENV/bin/python" benchmarks/bench_torch.py --points 6 \
    --out "benchmarks/results/2026-12-07-torch-side-by-side-gpu.md" || echo "torch side by side failed"
fi
