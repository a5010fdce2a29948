#!/usr/bin/env bash
# Set everything up (uv from PyPI if missing, the locked environment) and run the tests.
# This is the README's test command; .ci/run calls it too. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
python3 -m uv sync --frozen
python3 -m uv run --frozen ruff check .
python3 -m uv run --frozen pytest -ra "$@"
