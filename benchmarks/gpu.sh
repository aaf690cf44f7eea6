#!/usr/bin/env bash
# Every GPU check in one call (a lent H200 has 15 minutes a session): correctness, then speed.
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu.sh [OUTDIR]
# Results (JSON) land in OUTDIR (default: benchmarks/results/gpu); copy them into the repository.
set -uo pipefail
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
$py benchmarks/gpu_checks.py 2>&1 | tee "$out/checks.txt"
for prec in fp32 bf16; do
  for batch in 128 512; do
    $py benchmarks/model_step.py --device cuda --precision "$prec" --batch "$batch" --steps 10 --rounds 5 \
      --warmup 3 --json > "$out/step_${prec}_b${batch}.json" && cat "$out/step_${prec}_b${batch}.json"
  done
done
$py benchmarks/model_step.py --device cuda --precision bf16 --batch 512 --channels-last --steps 10 --rounds 5 \
  --warmup 3 --json > "$out/step_bf16_b512_cl.json" && cat "$out/step_bf16_b512_cl.json"
