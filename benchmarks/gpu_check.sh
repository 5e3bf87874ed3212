#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see the `device` tool): the GPU tests, then the
# benchmarks, each printing a short table. Stages, in the order of what we most need measured:
#   bash benchmarks/gpu_check.sh [tests] [precision] [multigpu] [train] [before] [workers] \
#                                [evaluate] [generate]
# (none named: all). A lent machine has ~15 minutes in all: `tests precision multigpu` should fit
# one 10-minute call (multigpu needs 2 or more GPUs, and says so on one), as should `tests train`.
# Packages the GPU image lacks travel as wheels in .whl/ (omegaconf + antlr4 runtime, diffusers,
# kornia, kornia_rs, importlib_metadata): see README.md, "GPU check". Exit status: 2 without a
# CUDA GPU (or for an unknown stage), 1 when a stage's tests failed.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_check.sh needs a CUDA GPU, and this machine's torch sees none (torch.cuda.is_available() is False, or no torch): run it on a GPU machine" >&2
  exit 2
fi
ALL_STAGES="tests precision multigpu train before workers evaluate generate"
STAGES=${*:-$ALL_STAGES}
for stage in $STAGES; do
  if [[ " $ALL_STAGES " != *" $stage "* ]]; then
    echo "gpu_check.sh: no stage called '$stage' (the stages: $ALL_STAGES)" >&2
    exit 2
  fi
done
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
FAILED=()
quiet() { "$@" 2>&1 | grep -v -i warn; }
# pytest's summary of some GPU tests; a failure marks the stage (first argument) as failed
gpu_tests() {
  local stage=$1
  shift
  python3 -m pytest -q -p no:cacheprovider -p no:logging -rs "$@" 2>&1 | tail -12 || FAILED+=("$stage")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, diffusers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__)"

tests() {
  echo "== tests on the GPU (bf16 training, both backends, both decodes, SyncBatchNorm, nvJPEG, the losses and the encoder under autocast)"
  gpu_tests tests tests/pretrain/test_gpu.py tests/pretrain/test_device_decode.py \
    tests/pretrain/test_losses.py tests/evaluate/test_feature_cache_device.py \
    -k "${GPU_TEST_FILTER:-(cuda or gpu or device) and not each_precision and not two_gpu}"
}
precision() {
  echo "== every precision on the GPU, each method one epoch: bf16-mixed, 16-mixed (fp16 + gradient scaler), 64-true; bf16-true refused"
  gpu_tests precision tests/pretrain/test_gpu.py -k each_precision
}
multigpu() {
  if [ "$GPUS" -lt 2 ]; then
    echo "== multigpu: needs 2 or more GPUs, this machine has $GPUS: not run"
    return
  fi
  echo "== two GPUs: each method in mixdiff mode for 2 epochs, killed and resumed; torchrun generation"
  gpu_tests multigpu tests/pretrain/test_gpu.py tests/generate/test_generate_gpu.py \
    -k "two_gpu or torchrun"
}
train() {
  echo "== training throughput, ResNet-50 asymmetric (224 px, bf16): both decodes, input stream on and off"
  quiet python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 433 \
    --synthetic-size 512 --backbones resnet50 --small-stem false --recipes asymmetric \
    --modes real mixdiff --backends batched --decodes cpu device --input-streams on off \
    --batch-size 128 --images 2048 --steps 100 --step-steps 30 --workers 15 \
    --json "$OUT/train_step_224_asymmetric.json"
  echo "== training throughput, ResNet-50 SimCLR recipe (224 px, bf16): both decodes"
  quiet python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 433 \
    --synthetic-size 512 --backbones resnet50 --small-stem false --recipes simclr \
    --modes real mixdiff --backends batched --decodes cpu device --batch-size 128 \
    --images 2048 --steps 100 --step-steps 30 --workers 15 --json "$OUT/train_step_224_simclr.json"
  echo "== training throughput, DINO multi-crop (ViT-S/16, 224 px + 8 local crops at 96 px)"
  quiet python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 433 \
    --synthetic-size 512 --backbones vit_small --recipes dino --modes real mixdiff \
    --backends batched --decodes cpu device --batch-size 128 --images 2048 --steps 100 \
    --step-steps 20 --workers 15 --json "$OUT/train_step_dino.json"
  echo "== where the device half's time goes (one batch of 128, stage by stage)"
  quiet python3 benchmarks/device_half.py --device cuda --batch-size 128 --repeats 5 \
    --json "$OUT/device_half.json"
}
before() {
  echo "== the same machine before: per_image (~90 samples/s, so 30 batches)"
  quiet python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 433 \
    --synthetic-size 512 --backbones resnet50 --small-stem false --recipes asymmetric \
    --modes real mixdiff --backends per_image --batch-size 128 --images 1024 --steps 30 \
    --allow-few-steps --step-steps 10 --workers 15 --json "$OUT/train_step_224_per_image.json"
}
workers() {
  echo "== one loader worker's cost per sample (this machine's cores)"
  quiet python3 benchmarks/worker_cost.py --repeats 2 --json "$OUT/worker_cost.json"
}
evaluate() {
  echo "== offline evaluation speed (ResNet-50 encoding at 224 px, ImageNet-100-sized probe)"
  quiet python3 benchmarks/eval_speed.py --device cuda --image-size 224 --images 2048 \
    --batch-size 256 --workers 12 --probe-n 126689 --out "$OUT/eval_speed.json"
}
generate() {
  echo "== generation tests on the GPU (fp16, torch.compile with a partial last batch, the embedded DDPM's training)"
  gpu_tests generate tests/generate/test_generate_gpu.py -k "not torchrun"
  echo "== generation throughput (SD image variations, full size, 512 px, 50 steps)"
  quiet python3 benchmarks/generate_throughput.py --full-size --images 96 --batch-size 32 \
    --json "$OUT/generate_full.json"
  echo "== generation throughput with torch.compile"
  quiet timeout 240 python3 benchmarks/generate_throughput.py --full-size --images 96 \
    --batch-size 32 --compile --json "$OUT/generate_compile.json"
}
for stage in $STAGES; do "$stage"; done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "== tests failed in: ${FAILED[*]}"
  exit 1
fi
