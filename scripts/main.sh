#!/usr/bin/env bash
# The main job: set up .venv, start a local agent on loopback, benchmark the built-in model on it, print
# the figures, stop the agent. Extra arguments go to scripts/quickstart.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/python scripts/quickstart.py "$@"
