#!/usr/bin/env bash
# The speed runs of issue 7, as one device-tool command (results under $OUT):
#   bash benchmarks/device_speed.sh
# VoCo compression (eager and compiled, batch sweep, cuDNN attention, kernel breakdown), LLaVA-Mini
# compression, and the 10,000-frame LLaVA-Mini question's GPU memory.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/voco_speed.py --frames 64 --batch 32 --repeats 3 --compile --profile --skip-decode \
  --out "$OUT/voco_speed.json" 2>&1 | tee "$OUT/voco_speed.txt"
python3 benchmarks/mini_speed.py --frames 64 --repeats 3 --out "$OUT/mini_speed.json" 2>&1 | tee "$OUT/mini_speed.txt"
python3 benchmarks/mini_long.py --frames "${LONG_FRAMES:-10000}" --out "$OUT/mini_long.json" 2>&1 | tee "$OUT/mini_long.txt"
