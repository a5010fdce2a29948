"""What one ``LRSearch.ask`` costs the driver in the parallel search, at 100 and 1,000 studies.

The parallel search gives a free worker to the largest batch size whose next trial is not a
placeholder (``LinePolicy._fills``, which computes the provisional fit). Times two rounds of
asks on the NQM reference's 20 batch sizes x N seeds (no training: the search alone, real
Optuna): every study's first trial, then, after each is told a coarse-pass failure, every
study's second.

    uv run --frozen python benchmarks/parallel_ask.py [--seeds 5,50]
"""

from __future__ import annotations

import argparse
import time

from tune_jobs.lr_search import WAIT, LRSearch, Outcome

BATCH_SIZES = [2**k for k in range(2, 22)]


def ask_all(search: LRSearch) -> list:
    out = []
    while (p := search.ask()) not in (None, WAIT):
        out.append(p)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="5,50", help="seeds per run (studies = 20 x seeds)")
    args = ap.parse_args()
    for n in (int(x) for x in args.seeds.split(",")):
        s = LRSearch(BATCH_SIZES, list(range(n)), 1e-3, 2.0, 8, converge_tol=0.01, parallel=True)
        t = time.perf_counter()
        first = ask_all(s)
        t_first = (time.perf_counter() - t) / len(first)
        for p in first:
            s.tell(p, Outcome("stopped_early", None, 0.3, 400, 400.0), 1000, 0.2, "min")
        t = time.perf_counter()
        second = ask_all(s)
        t_second = (time.perf_counter() - t) / len(second)
        print(f"{len(s.states)} studies: {t_first * 1e3:.2f} ms per ask (first trials), "
              f"{t_second * 1e3:.2f} ms per ask (second trials)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
