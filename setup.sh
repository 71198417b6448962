#!/usr/bin/env bash
# Install NELS and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.11.
#   bash setup.sh            python packages (CPU torch first, so pip keeps the CPU build)
#   bash setup.sh --browser  also Chromium, for the browser tests and the README screenshot
#   bash setup.sh --dry-run  print the steps and the commands they would run, install nothing
# Best inside a virtual environment (python3 -m venv .venv && . .venv/bin/activate): it installs ~2 GB.
# Each step says what it does and how long it took; pip's own progress shows on a terminal.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
START=$SECONDS
BROWSER=""; DRY=""
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (options: --browser, --dry-run, --help)" >&2; exit 2 ;;
  esac
done
QUIET=""; [[ -t 1 ]] || QUIET="-q"  # a terminal sees pip's progress bars; a log gets one line per step
exec 3>&1  # where --dry-run says what it would run, whatever a command's own output is redirected to

step() { echo "[setup $((SECONDS - START)) s] $*"; }
run() { if [[ -n $DRY ]]; then echo "    would run: $*" >&3; else "$@"; fi; }
has() { $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

[[ -n $DRY ]] && step "dry run: nothing is installed"
if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
  step "note: no virtual environment is active; packages go into $($PY -c 'import sys; print(sys.prefix)')"
  step "      (python3 -m venv .venv && . .venv/bin/activate first keeps them apart)"
fi
step "upgrading pip"
run $PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! has torch; then
  # the CPU wheel (~200 MB) instead of the multi-GB CUDA default
  step "installing torch (CPU build, ~200 MB download)"
  run $PY -m pip install $QUIET "torch==2.13.0" 2>/dev/null || \
    run $PY -m pip install $QUIET torch --index-url https://download.pytorch.org/whl/cpu
else
  step "torch already installed: $($PY -c 'import importlib.metadata as m; print(m.version("torch"))')"
fi
step "installing NELS and its dependencies (numpy, PyAV, FAISS, yt-dlp, MiniLM, FastAPI, LiteRT, test tools)"
run $PY -m pip install $QUIET -e ".[dev]"
if [[ -n $BROWSER ]]; then
  if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (apt)"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    run $SUDO apt-get update -qq && run $SUDO apt-get install -y -qq chromium >/dev/null
  else
    step "chromium already installed"
  fi
fi
if command -v pyenv >/dev/null 2>&1; then run pyenv rehash || true; fi  # make the `nels` script visible on PATH
if [[ -n $DRY ]]; then
  step "done (dry run): $($PY -m nels.cli --version 2>/dev/null || echo 'nels not installed yet'); next: the same without --dry-run"
else
  step "done: $($PY -m nels.cli --version); next: nels demo"
fi
