#!/usr/bin/env bash
# Set everything up (uv from PyPI if missing, the locked environment), lint, and run the tests.
# This is the README's test command; .ci/run calls it too.
#
#   bash scripts/test.sh           every test (CI runs this)
#   bash scripts/test.sh --fast    everything but the tests marked `slow` (a few minutes)
#
# Other arguments go to pytest, e.g. `bash scripts/test.sh --fast tests/test_config.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
marker=()
if [ "${1:-}" = "--fast" ]; then
  shift
  marker=(-m "not slow")
fi
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
python3 -m uv sync --frozen
python3 -m uv run --frozen ruff check .
python3 -m uv run --frozen ruff format --check .
python3 -m uv run --frozen pytest -ra --durations=15 "${marker[@]}" "$@"
