#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see the `device` tool): the GPU tests, then the
# benchmarks, each printing a short table. Stages, in the order of what we most need measured:
#   bash benchmarks/gpu_check.sh [tests] [train] [before] [workers] [evaluate] [generate]
# (none named: all). A lent machine has ~15 minutes in all: `tests train` fit one 10-minute call.
# Packages the GPU image lacks travel as wheels in .whl/ (omegaconf + antlr4 runtime, diffusers,
# kornia, kornia_rs, importlib_metadata): see README.md, "GPU check".
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGES=${*:-tests train before workers evaluate generate}
quiet() { "$@" 2>&1 | grep -v -i warn; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, diffusers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__)"

tests() {
  echo "== tests on the GPU (bf16 training, both backends, both decodes)"
  python3 -m pytest -q -p no:cacheprovider -p no:logging tests/pretrain/test_gpu.py \
    tests/pretrain/test_device_decode.py ${GPU_TEST_FILTER:+-k "$GPU_TEST_FILTER"} 2>&1 | tail -6
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
  echo "== generation tests on the GPU (fp16)"
  python3 -m pytest -q -p no:cacheprovider -p no:logging tests/generate/test_generate.py 2>&1 | tail -3
  echo "== generation throughput (SD image variations, full size, 512 px, 50 steps)"
  quiet python3 benchmarks/generate_throughput.py --full-size --images 96 --batch-size 32 \
    --json "$OUT/generate_full.json"
  echo "== generation throughput with torch.compile"
  quiet timeout 240 python3 benchmarks/generate_throughput.py --full-size --images 96 \
    --batch-size 32 --compile --json "$OUT/generate_compile.json"
}
for stage in $STAGES; do "$stage"; done
