#!/usr/bin/env bash
# One short call on a lent GPU machine: the GPU tests, then the benchmarks, one table at the end.
#   bash benchmarks/gpu_check.sh            (writes $OUT/gpu_check.md when $OUT is set)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check.md"
pip install -q -e ".[dev]" >/dev/null 2>&1 || pip install -e ".[dev]"
python - <<'PY' | tee "$out"
import torch
print(f"# GPU check: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA'}, torch {torch.__version__}\n")
PY
echo '## GPU tests' | tee -a "$out"
python -m pytest tests/test_gpu.py tests/test_optim.py -q -p no:cacheprovider 2>&1 | tail -5 | tee -a "$out"
echo '## optimizer overhead' | tee -a "$out"
timeout 240 python benchmarks/optimizer_overhead.py 2>&1 | tail -12 | tee -a "$out"
if [ -f benchmarks/cifar_throughput.py ]; then
  echo '## CIFAR throughput (bf16, channels_last)' | tee -a "$out"
  timeout 180 python benchmarks/cifar_throughput.py 2>&1 | tail -10 | tee -a "$out"
fi
if [ -f benchmarks/engine_overhead.py ]; then
  echo '## engine overhead' | tee -a "$out"
  timeout 120 python benchmarks/engine_overhead.py --device cuda 2>&1 | tail -10 | tee -a "$out"
fi
echo "table written to $out"
