#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what a profile needs.
#   scripts/setup.sh dev    everything the tests need: agent, ONNX Runtime, coordinator, test and lint tools
#   scripts/setup.sh demo   what `edgebench demo` needs: agent, ONNX Runtime, coordinator
# torch is installed first, pinned: the coordinator extra only gives a range, and an unpinned torch
# would pull a multi-GB CUDA build (see README, "Installing"). Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-dev}
PYTHON=${PYTHON:-python3}
TORCH_PIN=${EDGEBENCH_TORCH_PIN:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "edgebench needs Python >= 3.10"'
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.edgebench-$profile-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  "${pip[@]}" install --upgrade pip >/dev/null
  .venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" install "$TORCH_PIN"
  case "$profile" in
    # The pin goes with the extras too: without it the resolver may pick an older litert-torch that wants
    # an older torch and silently replace the CPU wheel.
    dev)  "${pip[@]}" install "$TORCH_PIN" -e ".[dev]" ;;
    demo) "${pip[@]}" install "$TORCH_PIN" -e ".[agent,onnxruntime,openvino,litert,coordinator,convert-openvino,convert-tflite]" ;;
    *) echo "unknown profile $profile (dev|demo)" >&2; exit 2 ;;
  esac
  touch "$stamp"
fi
