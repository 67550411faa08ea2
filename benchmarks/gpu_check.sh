#!/usr/bin/env bash
# One short call on a lent GPU machine: the GPU tests, then the benchmarks, one table at the end.
#   bash benchmarks/gpu_check.sh            (writes $OUT/gpu_check.md when $OUT is set)
# The lent machine has no network: the package goes in without dependencies (its own torch,
# timm, typer, ... are used) or, failing that, from the source tree on PYTHONPATH. Each step has
# its own time limit, most important first, so a slow step cannot cost the ones before it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
dir="${OUT:-/tmp}"
out="$dir/gpu_check.md"
export PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$dir/install.log" 2>&1; then
  echo "(pip install failed, see install.log: using the source tree on PYTHONPATH)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'PY' | tee "$out"
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA"
print(f"# GPU check: {gpu}, torch {torch.__version__}, Python {platform.python_version()}\n")
PY

step() {  # step TITLE SECONDS COMMAND...: run with a time limit, keep the tail in the table
  local title="$1" limit="$2"; shift 2
  local t0=$SECONDS rc
  echo "## $title" | tee -a "$out"
  timeout "$limit" "$@" >"$dir/step.log" 2>&1; rc=$?
  tail -25 "$dir/step.log" | tee -a "$out"
  echo "(exit $rc, $((SECONDS - t0)) s of $limit)" | tee -a "$out"; echo | tee -a "$out"
}

step "GPU tests" 150 python3 -m pytest tests/test_gpu.py tests/test_optim.py -rs -p no:cacheprovider
step "command / training (issue 28)" 180 python3 benchmarks/command_overhead.py --case all --device cuda
step "engine overhead" 90 python3 benchmarks/engine_overhead.py --device cuda --sync-check
step "optimizer overhead" 100 python3 benchmarks/optimizer_overhead.py
if [ -f benchmarks/cifar_throughput.py ]; then
  step "CIFAR throughput (bf16, channels_last)" 80 python3 benchmarks/cifar_throughput.py --device cuda --reps 5
fi
rm -f "$dir/step.log"
echo "table written to $out"
