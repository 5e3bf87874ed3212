#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see the `device` tool). It runs the tests on the GPU
# (training in bf16, both augmentation backends, generation in fp16), then the benchmarks, and prints a short table.
# Packages the GPU image lacks travel as wheels in .whl/ (omegaconf + antlr4 runtime, diffusers,
# importlib_metadata): see README.md, "GPU check".
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, diffusers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__)"
echo "== tests on the GPU"
python3 -m pytest -q -p no:cacheprovider -p no:logging tests/test_gpu.py tests/test_losses.py \
  tests/test_generate.py ${GPU_TEST_FILTER:+-k "$GPU_TEST_FILTER"} 2>&1 | tail -6
echo "== training throughput, both augmentation backends (ResNet-50, 224 px, bf16)"
python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 375 \
  --synthetic-size 512 --backbones resnet50 --small-stem false --recipes asymmetric \
  --modes real mixdiff --backends batched per_image --batch-size 128 --images 2048 --steps 30 \
  --workers 15 --json "$OUT/train_step_224.json" 2>&1 | grep -v -i warn
echo "== training throughput, DINO multi-crop (ViT-S/16, 224 px + 8 local crops at 96 px)"
python3 benchmarks/train_step.py --device cuda --image-size 224 --real-size 375 \
  --synthetic-size 512 --backbones vit_small --recipes dino --modes mixdiff \
  --backends batched per_image --batch-size 128 --images 2048 --steps 20 --workers 15 \
  --json "$OUT/train_step_dino.json" 2>&1 | grep -v -i warn
echo "== generation throughput (SD image variations, full size, 512 px, 50 steps)"
python3 benchmarks/generate_throughput.py --full-size --images 96 --batch-size 32 \
  --json "$OUT/generate_full.json" 2>&1 | grep -v -i warn
echo "== generation throughput with torch.compile"
timeout 240 python3 benchmarks/generate_throughput.py --full-size --images 96 --batch-size 32 \
  --compile --json "$OUT/generate_compile.json" 2>&1 | grep -v -i warn
echo "== offline evaluation speed (ResNet-50 encoding at 224 px, ImageNet-100-sized linear probe)"
python3 benchmarks/eval_speed.py --device cuda --image-size 224 --images 2048 --batch-size 256 \
  --workers 12 --probe-n 126689 --out "$OUT/eval_speed.json" 2>&1 | grep -v -i warn
