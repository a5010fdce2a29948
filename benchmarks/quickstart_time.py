"""Wall time of `critbatch quickstart`, and whether two runs with one seed print one table.

Runs the quickstart twice, each in a fresh folder (fresh Ray, fresh MLflow SQLite store),
times each and compares the printed tables line by line.

    uv run --frozen python benchmarks/quickstart_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def table(out: str) -> list[str]:
    """The sweep's summary as `critbatch run` prints it: from the headline (`[tuned] target
    ...`) to the end of the steps table (before the notes and the report path)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("[tuned] target"))
    stop = ("note:", "report:")
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(stop)), len(lines))
    return lines[start:end]


def main() -> int:
    runs = []
    for i in range(2):
        d = tempfile.mkdtemp(prefix=f"critbatch-qs{i}-")
        env = dict(os.environ, HOME=d)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "tune_jobs.cli", "quickstart", "--no-report"], cwd=d, env=env,
                           capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - t
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-3000:])
            return 1
        runs.append((wall, table(p.stdout)))
        print(f"run {i + 1}: {wall:.0f} s")
    print("\n".join(runs[0][1]))
    same = runs[0][1] == runs[1][1]
    print(f"\nsame table twice: {same}; wall times {runs[0][0]:.0f} s and {runs[1][0]:.0f} s "
          f"(goal <= 300 s) on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
