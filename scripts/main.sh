#!/usr/bin/env bash
# The main job: set up .venv, then `edgebench demo`: two local agents on loopback, the built-in model
# benchmarked on both, HTML and Markdown reports written (paths printed), agents stopped.
# Extra arguments go to `edgebench demo` (e.g. -o DIR, --min-duration S).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/edgebench demo "$@"
