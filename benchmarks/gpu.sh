#!/usr/bin/env bash
# Every GPU check in one call (a loan is about 15 minutes a session, at most 10 a command), in two sections:
# 1. correctness and speed, ours vs torchvision (under 5 minutes): OUTDIR/{gpu.txt,checks.txt,steps.jsonl};
# 2. the experiments at full length, continuing from the run records of earlier loans: OUTDIR/experiments.
# Usage on the GPU machine, from the repository root:
#   bash benchmarks/gpu.sh OUTDIR
set -uo pipefail
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
  | tee -a "$out/gpu.txt"

# ---- Section 1: correctness and speed -----------------------------------------------------------------------
echo "== correctness (LRN paths, the model) and the CUDA tests"
{ $py benchmarks/gpu_checks.py; $py -m pytest -q -p no:cacheprovider tests/test_loader.py tests/test_augment.py \
  -k "cuda or CUDA"; } 2>&1 | tee "$out/checks.txt"

echo "== training and inference throughput, ours vs torchvision"
: > "$out/steps.jsonl"
# Each CUDA LRN (ALEXNET_LRN_CUDA): the compiled tensor formula (the default) and the Triton kernels.
for cfg in "fp32 128 compile" "fp32 512 compile" "bf16 512 compile" "bf16 512 triton" "fp32 512 triton"; do
  set -- $cfg
  ALEXNET_LRN_CUDA="$3" $py benchmarks/model_step.py --device cuda --precision "$1" --batch "$2" --steps 10 \
    --rounds 5 --warmup 3 --models alexnet alexnet_nolrn --json \
    | $py -c "import json,sys; r=json.load(sys.stdin); r['lrn_cuda']='$3'; print(json.dumps(r))" \
    | tee -a "$out/steps.jsonl"
done

# ---- Section 2: the experiments, resumable across loans ----------------------------------------------------
# A loan is about 15 minutes, at most 10 a command, and its machine is bare: every finished run leaves a
# record (experiments/records), the records this checkout carries are copied in first, so each loan trains
# only what earlier loans (and the CPU) have not; bring OUTDIR/experiments/records back into experiments/records
# and commit them. A run cut by its time limit is lost with the machine (its checkpoint was on it), so the
# limits leave room for whole runs. The store sits on the device (data.in_memory) and is augmented there.
echo "== experiments: Figure 1 (all 50,000 images, fp32), the ablations (30 epochs, every variant), lrn-cifar,"
echo "   the paper's recipe (20 epochs, 3 seeds) and time to accuracy (a 30-epoch horizon, 3 seeds)"
exp_out="$out/experiments"
mkdir -p "$exp_out"
cp -r experiments/records "$exp_out/" 2>/dev/null
# Each experiment gets its own cap and no more than what is left of the whole call (GPU_TOTAL_S, counted from
# the script's start: the device allows 600 s a command); one with under a minute left is skipped, and a
# later loan takes it up from the records.
total=${GPU_TOTAL_S:-570}
experiment() {
  local cap=$1 left=$(( total - SECONDS )); shift
  (( left < cap )) && cap=$left
  if (( cap < 60 )); then echo "-- skipped (${left}s left of ${total}s): alexnet experiment $1"; return; fi
  echo "-- alexnet experiment $1 (at most ${cap}s)"
  timeout "$cap" $py -m alexnet experiment "$@" --device cuda --runs-dir "/tmp/alexnet-runs/$1" --out "$exp_out" \
    --no-progress 2>&1 | tail -n 12
}
experiment "${RELU_TANH_S:-180}" relu-vs-tanh --seeds 3 --budget paper
experiment "${ABLATIONS_S:-240}" ablations --seeds 3 --budget gpu
experiment "${LRN_CIFAR_S:-90}" lrn-cifar --seeds 3 --budget gpu
experiment "${PAPER_RECIPE_S:-240}" paper-recipe --seeds 3 --budget gpu
experiment "${TIME_TO_ACCURACY_S:-240}" time-to-accuracy --seeds 3 --budget gpu
ls "$exp_out/results" "$exp_out/records"/* 2>/dev/null
