#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run every test tier. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
scripts/install_browser.sh   # headless chromium for the HTML report test (skipped with a reason if impossible)
py=.venv/bin/python
echo "== ruff"; "$py" -m ruff check .
echo "== mypy --strict (agent, protos, coordinator)"; "$py" -m mypy agent protos coordinator
echo "== pytest"; "$py" -m pytest -q "$@"
