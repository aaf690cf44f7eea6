#!/usr/bin/env bash
# Every GPU check in one call (a lent H200 has 15 minutes a session): correctness, speed, a training run.
# Usage on the GPU machine, from the repository root:
#   bash benchmarks/gpu.sh OUTDIR [CIFAR_TAR]
# CIFAR_TAR (default $ALEXNET_DATA/cifar10-jpeg.tar.gz) is prepared there and trained on with the cifar10
# preset on the GPU. Results: OUTDIR/{gpu.txt,checks.txt,steps.jsonl,decode.json,prepare.json,train.log,
# metrics.jsonl}.
set -uo pipefail
out="${1:-benchmarks/results/gpu}"
cifar="${2:-${ALEXNET_DATA:-../shared/data}/cifar10-jpeg.tar.gz}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
  | tee -a "$out/gpu.txt"

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

echo "== JPEG shards decoded on the GPU (nvJPEG) vs CPU workers: Imagenette prepared with --encoding jpeg"
nette="${ALEXNET_DATA:-../shared/data}/imagenette2-224.tar.gz"
if [ -f "$nette" ]; then
  $py -m alexnet prepare "$nette" --out /tmp/alexnet-stores/imagenette-jpeg --encoding jpeg --workers "$(nproc)" \
    --json > /dev/null && $py benchmarks/gpu_decode.py /tmp/alexnet-stores/imagenette-jpeg --json | tee "$out/decode.json"
else
  echo "skipped: $nette not found" | tee "$out/decode.json"
fi

echo "== prepare CIFAR-10 and train the cifar10 preset on the GPU"
store=/tmp/alexnet-stores/cifar10
$py -m alexnet prepare "$cifar" --out "$store" --size 32 --workers "$(nproc)" --json > "$out/prepare.json"
tail -c 600 "$out/prepare.json"
$py -m alexnet train --config cifar10 --data "$store" --run-dir /tmp/alexnet-runs/cifar10-gpu --no-progress \
  --set run.device=cuda 2>&1 | tee "$out/train.log"
cp /tmp/alexnet-runs/cifar10-gpu/metrics.jsonl "$out/metrics.jsonl" 2>/dev/null

# The experiments (after every check above): as much as fits, each under a time limit; the runs resume, so a
# later call continues them. The store sits on the device (data.in_memory) and is augmented there.
echo "== experiments on the GPU: relu-vs-tanh (Figure 1, full length), the ablations (30 epochs, 1 seed), lrn-cifar (reduced)"
exp_out="$out/experiments"
mkdir -p "$exp_out"
timeout "${RELU_TANH_S:-150}" $py -m alexnet experiment relu-vs-tanh --seeds 3 --budget paper --device cuda \
  --runs-dir /tmp/alexnet-runs/relu-vs-tanh --out "$exp_out" --no-progress 2>&1 | tail -n 5
timeout "${ABLATIONS_S:-240}" $py -m alexnet experiment ablations --seeds 1 --budget gpu --device cuda \
  --runs-dir /tmp/alexnet-runs/ablations --out "$exp_out" --no-progress 2>&1 | tail -n 12
timeout "${LRN_CIFAR_S:-120}" $py -m alexnet experiment lrn-cifar --seeds 3 --budget gpu --device cuda \
  --runs-dir /tmp/alexnet-runs/lrn-cifar --out "$exp_out" --no-progress 2>&1 | tail -n 5
ls "$exp_out/results" 2>/dev/null
