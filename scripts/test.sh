#!/usr/bin/env bash
# Set everything up (uv from PyPI if missing, the locked environment), lint, and run the tests.
# This is the README's test command; .ci/run calls it too.
#
#   bash scripts/test.sh           every test (CI runs this)
#   bash scripts/test.sh --fast    everything but the tests marked `slow` (no real sweep, server
#                                  or subprocess: about 2 minutes on 2 cores)
#
# Tests run in CRITBATCH_TEST_WORKERS pytest-xdist processes (default 2), a test file per
# process at a time (module fixtures stay shared): most of a real sweep's test is waiting on
# Ray, a server or a subprocess, so two at once fill 2 cores. CRITBATCH_TEST_WORKERS=0 runs
# them in this process. Other arguments go to pytest, e.g.
# `bash scripts/test.sh --fast tests/test_config.py -x`.
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
workers=${CRITBATCH_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 0 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
python3 -m uv run --frozen pytest -ra --durations=15 "${parallel[@]}" "${marker[@]}" "$@"
