#!/usr/bin/env bash
# The CUDA path in a few minutes, on a machine with one GPU and a CUDA build of torch:
#   bash benchmarks/gpu.sh [DATA_DIR]          (DATA_DIR: default $IWAE_DATA_DIR, else ../shared/data)
# 1. the CUDA tests (graph-captured and compiled steps against the eager one, devices);
# 2. the step benchmark on CUDA: both nets, k = 1, 5, 50, iwae against plain PyTorch and the
#    matmul floor, and the step with --precision bf16 (benchmarks/results/step_cuda.*; the
#    estimators and the conv net left out to keep the script within 8 minutes);
# 3. one epoch of `iwae train --device cuda` (the paper's 1-layer IWAE, k=5) and L_5000 on the
#    first 1,000 test images;
# 4. AIS (default schedule: 500 steps x 8 chains, compiled) of that model on the same 1,000 images;
# 5. what the paper's full grids (Tables 1 and 3, 3280 epochs) cost at the measured step times.
# Everything it prints goes to ${OUT:-benchmarks/results}/gpu.log as well.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${IWAE_DATA_DIR:-$(cd .. && pwd)/shared/data}}"
LOG_DIR="${OUT:-benchmarks/results}"
mkdir -p "$LOG_DIR"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 IWAE_DATA_DIR="$DATA"
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), f"gpu.sh needs CUDA (torch {torch.__version__}, CUDA build {torch.version.cuda})"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
{
  echo "== CUDA tests"
  start=$SECONDS
  python3 -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_device.py -k "cuda" -rs
  echo "tests: $((SECONDS - start)) s"
  echo "== step benchmark on CUDA"
  start=$SECONDS
  python3 -m benchmarks.step --device cuda --steps 100 --pretrain 50 --no-estimators --no-conv --no-eval --bf16 --out "$LOG_DIR"
  echo "benchmark: $((SECONDS - start)) s"
  echo "== 1 epoch of iwae train --device cuda, then L_5000 on 1,000 test images"
  start=$SECONDS
  rm -rf /tmp/iwae-gpu-run
  python3 -m iwae train --device cuda --epochs 1 --out /tmp/iwae-gpu-run --final-limit-test 1000 --quiet
  echo "train + evaluate: $((SECONDS - start)) s"
  echo "== AIS on CUDA, 1,000 test images"
  start=$SECONDS
  python3 -m iwae evaluate /tmp/iwae-gpu-run --method ais --limit-test 1000 --device cuda --quiet
  echo "AIS: $((SECONDS - start)) s"
  echo "== the full grids at the CUDA step times"
  python3 -m benchmarks.grid_cost --step "$LOG_DIR/step_cuda.json" --evaluate ''
} 2>&1 | tee "$LOG_DIR/gpu.log"
