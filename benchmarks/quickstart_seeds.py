"""Is the quickstart's B_crit repeatable across training seeds? (issue: a B_crit you can trust)

Runs the quickstart job (``tune_jobs/jobs/quickstart.yaml``, or ``--job``) once per training
seed (``--set seeds=[N]``, N = 0..4 by default), each in a fresh folder (fresh local Ray, fresh
MLflow SQLite store), one after the other, and reads each run's closing summary. Prints per
seed: wall time, B_crit with its 95% CI, the regimes the measured batch sizes fall in, and the
verdict; then the goals:

- every seed's B_crit within +-25% of the median over seeds;
- every seed's CI covers that median;
- every run within 180 s on the machine (the install excluded);
- the linear, diminishing-returns and stagnation regimes all present.

    uv run --frozen python benchmarks/quickstart_seeds.py [--seeds 0,1,2,3,4] [--job PATH]

Exit code 0 when every goal is met. Run it alone: wall times on a shared 2-core machine are
not the quickstart's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

from fresh_cli import run_fresh

REPO = Path(__file__).resolve().parents[1]
HEADLINE = re.compile(r"B_crit = (\S+) \(95% CI (\S+)-(\S+)\)")
REGIMES = re.compile(r"\((\d+) linear, (\d+) diminishing returns, (\d+) stagnation\)")


def run_one(job: Path, seed: int, cpus: int | None) -> dict:
    args = ["run", str(job), "--no-progress", "--set", f"seeds=[{seed}]"]
    p, wall, _ = run_fresh(args, f"quickstart-seed{seed}", f"cbqs{seed}-", cpus)
    out = p.stdout
    m, r = HEADLINE.search(out), REGIMES.search(out)
    verdict = next((ln for ln in out.splitlines() if ln.startswith("Verdict:")), "Verdict: none")
    if p.returncode or m is None:
        sys.stderr.write(out[-3000:] + p.stderr[-3000:])
    return {
        "seed": seed,
        "wall_s": wall,
        "rc": p.returncode,
        "b_crit": float(m.group(1)) if m else float("nan"),
        "lo": float(m.group(2)) if m else float("nan"),
        "hi": float(m.group(3)) if m else float("nan"),
        "regimes": tuple(int(x) for x in r.groups()) if r else None,
        "verdict": verdict,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--job", type=Path, default=REPO / "tune_jobs" / "jobs" / "quickstart.yaml")
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args()
    rows = []
    for s in (int(x) for x in args.seeds.split(",")):
        row = run_one(args.job, s, args.num_cpus)
        rows.append(row)
        print(f"seed {s}: {row['wall_s']:.0f} s  B_crit {row['b_crit']:.3g} "
              f"(CI {row['lo']:.3g}-{row['hi']:.3g})  regimes {row['regimes']}  "
              f"{row['verdict']}", flush=True)  # fmt: skip
    ok = [r for r in rows if r["rc"] == 0 and r["b_crit"] == r["b_crit"]]
    if len(ok) < len(rows):
        print(f"{len(rows) - len(ok)} run(s) failed")
        return 1
    med = statistics.median(r["b_crit"] for r in ok)
    spread = max(abs(r["b_crit"] / med - 1) for r in ok)
    covered = sum(r["lo"] <= med <= r["hi"] for r in ok)
    walls = [r["wall_s"] for r in ok]
    regimes_all = all(r["regimes"] and min(r["regimes"]) > 0 for r in ok)
    goals = {
        "within +-25% of the median": spread <= 0.25,
        "every CI covers the median": covered == len(ok),
        "every run <= 180 s": max(walls) <= 180,
        "three regimes in every run": regimes_all,
    }
    print(f"\nmedian B_crit {med:.3g}; largest deviation {spread:+.0%}; CIs covering the median "
          f"{covered}/{len(ok)}; wall {min(walls):.0f}-{max(walls):.0f} s on {os.cpu_count()} "
          f"cores, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    for name, met in goals.items():
        print(f"  {'met' if met else 'NOT met'}: {name}")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
