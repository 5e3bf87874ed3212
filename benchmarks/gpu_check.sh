#!/usr/bin/env bash
# The one script to run on a lent GPU machine (see the `device` tool): the GPU tests, then the
# training-throughput benchmark at ImageNet scale (224 px, ResNet-50, bf16) and at 32 px.
# Packages the GPU image lacks travel as wheels in .whl/ (omegaconf and its antlr4 runtime).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
python3 -m pytest -q -p no:cacheprovider -p no:logging tests/test_gpu.py tests/test_losses.py 2>&1 | tail -5
python3 benchmarks/train_step.py --image-size 224 --real-size 375 --synthetic-size 512 \
  --backbone resnet50 --small-stem false --batch-size 128 --images 1024 --steps 20 --workers 14 \
  --json "$OUT/train_step_224.json" 2>&1 | grep -v Warning
python3 benchmarks/train_step.py --batch-size 512 --images 4096 --steps 20 --workers 14 \
  --json "$OUT/train_step_32.json" 2>&1 | grep -v Warning
