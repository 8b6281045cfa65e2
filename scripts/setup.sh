#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what a profile needs.
#   scripts/setup.sh dev    agent + ONNX Runtime + test and lint tools (what the tests need)
#   scripts/setup.sh demo   agent + ONNX Runtime + what the demo needs to build its model
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-dev}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "edgebench needs Python >= 3.10"'
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.edgebench-$profile-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  "${pip[@]}" install --upgrade pip >/dev/null
  case "$profile" in
    dev)  "${pip[@]}" install -e ".[dev]" ;;
    demo) "${pip[@]}" install -e ".[agent,onnxruntime]" "onnx>=1.16" ;;
    *) echo "unknown profile $profile (dev|demo)" >&2; exit 2 ;;
  esac
  touch "$stamp"
fi
