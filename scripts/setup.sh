#!/usr/bin/env bash
# One setup command from a fresh clone: Debian's Fashion-MNIST files, a virtual environment in
# .venv with torch 2.14.1 / torchvision 0.29.1, and this package with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -c "import mixdiff, torch; print('mixdiff', mixdiff.__version__, 'torch', torch.__version__)"
