#!/usr/bin/env bash
# Install NELS and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.11.
#   bash setup.sh            python packages (CPU torch first, so pip keeps the CPU build)
#   bash setup.sh --browser  also Chromium, for the browser tests and the README screenshot
# Best inside a virtual environment (python3 -m venv .venv && . .venv/bin/activate): it installs ~2 GB.
# Each step says what it does and how long it took; pip's own progress shows on a terminal.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
START=$SECONDS
QUIET=""; [[ -t 1 ]] || QUIET="-q"  # a terminal sees pip's progress bars; a log gets one line per step

step() { echo "[setup $((SECONDS - START)) s] $*"; }

if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
  step "note: no virtual environment is active; packages go into $($PY -c 'import sys; print(sys.prefix)')"
  step "      (python3 -m venv .venv && . .venv/bin/activate first keeps them apart)"
fi
step "upgrading pip"
$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! $PY -c "import torch" 2>/dev/null; then
  # the CPU wheel (~200 MB) instead of the multi-GB CUDA default
  step "installing torch (CPU build, ~200 MB download)"
  $PY -m pip install $QUIET "torch==2.13.0" 2>/dev/null || \
    $PY -m pip install $QUIET torch --index-url https://download.pytorch.org/whl/cpu
else
  step "torch already installed: $($PY -c 'import torch; print(torch.__version__)')"
fi
step "installing NELS and its dependencies (numpy, PyAV, FAISS, yt-dlp, MiniLM, FastAPI, LiteRT, test tools)"
$PY -m pip install $QUIET -e ".[dev]"
if [[ "${1:-}" == "--browser" ]]; then
  if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (apt)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    step "chromium already installed"
  fi
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true  # make the `nels` script visible on PATH
step "done: $($PY -m nels.cli --version); next: nels demo"
