#!/usr/bin/env bash
# On a GPU: the paper net's step rate with its LRN as a compiled autograd Function (the default) and as a
# compiled graph (ALEXNET_LRN_COMPILE=graph), beside the paper net without LRN (the bound) and torchvision's.
# Usage: bash benchmarks/gpu_lrn_modes.sh OUTFILE
set -uo pipefail
out="${1:-benchmarks/results/gpu_lrn_modes.jsonl}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: > "$out"
for mode in 1 0; do
  for cfg in "fp32 256" "bf16 512"; do
    set -- $cfg
    ALEXNET_LRN_COMPILE=$mode ${PYTHON:-python3} benchmarks/model_step.py --device cuda --precision "$1" \
      --batch "$2" --models alexnet alexnet_nolrn --steps 10 --rounds 5 --warmup 3 --json \
      | ${PYTHON:-python3} -c "import json,sys; d=json.load(sys.stdin); d['lrn_compile']='$mode'; print(json.dumps(d))" \
      | tee -a "$out"
  done
done
