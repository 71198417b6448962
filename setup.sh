#!/usr/bin/env bash
# Install NELS and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.11.
#   bash setup.sh            python packages (CPU torch first, so pip keeps the CPU build)
#   bash setup.sh --browser  also Chromium, for the browser tests and the README screenshot
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! $PY -c "import torch" 2>/dev/null; then
  # the CPU wheel (~200 MB) instead of the multi-GB CUDA default
  $PY -m pip install -q "torch==2.13.0" 2>/dev/null || \
    $PY -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
$PY -m pip install -q -e ".[dev]"
if [[ "${1:-}" == "--browser" ]]; then
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true  # make the `nels` script visible on PATH
echo "nels installed: $($PY -m nels.cli --version)"
