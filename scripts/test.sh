#!/usr/bin/env bash
# Set everything up (uv from PyPI if missing, the locked environment) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --python ">=3.11"
uv run --frozen ruff check .
uv run --frozen pytest -q -ra "$@"
