"""How efficient is the learning-rate search? Measured on the NQM, whose answer is exact.

On the reference noisy quadratic model (``nqm_exact``: dim 10^4, h_i = 1/i, c_i = h_i,
target 0.01, batch sizes 2^2..2^21; ground truth from :mod:`trainables.nqm_truth`), for each
budget of trials per batch size, five searches run side by side in-process (no Ray), all
through :class:`tune_jobs.lr_search.LRSearch` over the same LR range:

- ``cascade``: the project's search with the ``lr_search`` settings of
  ``tune_jobs/jobs/nqm_reference.yaml`` (a line search in log LR per batch size, seeded from
  the neighbouring batch sizes' best LRs, stopped once converged, batch sizes one at a time
  from the largest down; docs/nqm.md, "Search efficiency");
- ``pipeline2``, ``pipeline4``: the same line search with every batch size in flight at
  once (``lr_search.pipeline: 2`` or ``4``): a study's k-th trial starts once the next
  larger batch size's study has k + 2 (or 4) results or finished, seeded from the larger
  ones' best LRs so far;
- ``random``: log-uniform random search;
- ``grid``: a log grid with the same number of trials.

Every search stops a trial (checked at its reports) once it has run as many steps as the
search's ``steps_bound`` for its batch size (it can no longer win), once it lags its study's
fastest trial (``LRSearch.behind``, the job's ``lag_stop``), or once its loss fell by
less than 1% since half its current step count while still above the target (a plateau at
its noise floor: it will not reach the target). Reported per
(search, budget), mean over ``--repeats`` search seeds:

- ``b_crit_err``: |B_crit fitted on the best steps found / true B_crit - 1|;
- ``excess``: mean over batch sizes of best steps found / optimal steps - 1 (a batch size where
  no trial reached the target counts as ``miss`` and is left out of the fit and the mean);
- ``compute``: sum of the steps every trial ran (early-stopped ones up to their stop), as a
  multiple of the oracle's: one run at the optimal LR per batch size;
- ``wall``: when the last trial ends with a worker for every trial in flight, in steps (a
  step the same time at every batch size), over the oracle's wall time (the slowest batch
  size's optimal steps): how much the search's order, not only its compute, costs.
  The simulation runs one trial at a time; the pipeline and the cascade propose the same
  trials whatever the completion order, so the figures are those of a parallel run.

Run: ``.venv/bin/python benchmarks/search_efficiency.py [--budgets 4,8,12,16,32] [--repeats 3]``
(add ``--smoke-test`` for a 10-second check).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.fits import fit_mccandlish  # noqa: E402
from analysis.ground_truth import ground_truth  # noqa: E402
from trainables.api import Status, Target, TrialConfig  # noqa: E402
from trainables.nqm_truth import NQM, REFERENCE_BATCH_SIZES  # noqa: E402
from trainables.workloads.nqm import train_exact  # noqa: E402
from tune_jobs.job_file import load_job  # noqa: E402
from tune_jobs.lr_search import WAIT, LRSearch, Outcome, Proposal  # noqa: E402

TARGET = 0.01
MAX_STEPS = 10**7  # per trial, as in tune_jobs/jobs/nqm_reference.yaml
EVAL_EVERY = 100
LR_RANGE = (1e-3, 2.0)  # as in nqm_reference.yaml; the optima run from 0.014 to 1.995
# name -> (algorithm, cascade, pipeline lead)
METHODS = {
    "pipeline2": ("line_search", False, 2),
    "pipeline4": ("line_search", False, 4),
    "cascade": ("line_search", True, 0),
    "random": ("random", False, 0),
    "grid": ("grid", False, 0),
}
JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_reference.yaml"


class _Stop(Exception):
    pass


def run_trial(search: LRSearch, p: Proposal, options: dict) -> Outcome:
    """One nqm_exact trial, stopped at the first report at or past the search's steps bound,
    at a plateau, or once it is behind its study's fastest trial (``LRSearch.behind``)."""
    batch_size, lr, bound = p.batch_size, p.lr, search.steps_bound(p.study)
    seen = {"step": 0, "best": math.inf, "status": "", "steps": None, "censored": None}
    curve: list[tuple[float, float]] = []

    def report(m: dict, checkpoint: dict | None = None) -> None:
        seen["step"], seen["status"] = m["step"], m["status"]
        seen["best"] = min(seen["best"], m["eval_loss"])
        curve.append((m["step"], m["eval_loss"]))
        if m["status"] == Status.REACHED:
            seen["steps"] = m["steps_to_target"]
        elif m["status"] == Status.RUNNING and m["step"] >= bound:
            seen["censored"] = bound  # as the Tune scheduler marks it: needed more steps
            raise _Stop
        elif m["status"] == Status.RUNNING and (
            plateau(m) or search.behind(p.study, m["step"], seen["best"])
        ):
            seen["censored"] = m["step"]  # will not reach, or slower than the fastest
            raise _Stop

    history: list[tuple[int, float]] = []

    def plateau(m: dict) -> bool:
        """Loss down by < 1% since half the current step: stuck above the target (noise floor)."""
        history.append((m["step"], m["eval_loss"]))
        half = [loss for step, loss in history if step <= m["step"] / 2]
        return m["step"] >= 1000 and bool(half) and m["eval_loss"] > 0.99 * half[-1]

    cfg = TrialConfig(workload="nqm_exact", batch_size=batch_size, lr=lr, max_steps=MAX_STEPS,
                      eval_every=EVAL_EVERY, target=Target("eval_loss", TARGET), options=options)  # fmt: skip
    try:
        train_exact(cfg, report)
    except _Stop:
        seen["status"] = "stopped_early"
    best = seen["best"] if math.isfinite(seen["best"]) else None
    steps_run = int(seen["steps"] or seen["step"])
    return Outcome(
        str(seen["status"]), seen["steps"], best, steps_run, seen["censored"], tuple(curve)
    )


def run_search(method: str, budget: int, seed: int, sizes: list[int], options: dict) -> dict:
    algorithm, cascade, pipeline = METHODS[method]
    lr = load_job(JOB).lr_search  # the reference job's convergence stop and lag rule
    search = LRSearch(
        sizes,
        [0],
        *LR_RANGE,
        n_trials=budget,
        seed=seed,
        algorithm=algorithm,
        synchronous=False,
        cross_slack=1.0,  # exact problem: no noise to allow for
        converge_tol=lr.convergence_tolerance if lr.stop_when_converged else None,
        lag=lr.lag_stop,
        cascade=cascade,
        pipeline=pipeline,
    )
    best: dict[int, float] = {}
    compute = 0
    ends: dict[str, list[float]] = {n: [] for n in search.studies}  # study -> trials' end times
    finished_at: dict[str, int] = {}  # study -> trials it had when it finished
    while (p := search.ask()) is not None:
        assert p != WAIT  # one trial at a time: every proposal is told before the next ask
        start = _start_time(search, p, ends, finished_at, cascade, pipeline)
        out = run_trial(search, p, options)
        compute += out.steps_run
        search.tell(p, out, MAX_STEPS, TARGET, "min")
        ends[p.study].append(start + out.steps_run)
        if search.finished(p.study) and p.study not in finished_at:
            finished_at[p.study] = len(ends[p.study])
        if out.steps_to_target is not None:
            best[p.batch_size] = min(best.get(p.batch_size, math.inf), out.steps_to_target)
    wall = max(t for e in ends.values() for t in e)
    return {"best": best, "compute": compute, "wall": wall}


def _start_time(search, p, ends, finished_at, cascade: bool, pipeline: int) -> float:
    """When this trial could start with a worker for every trial in flight (time in steps,
    one step = one unit at every batch size): after its study's previous trial and, chained,
    once the next larger batch size's study allowed it (LRSearch._may_start): finished
    (cascade, first trial), or told k + lead trials or finished (pipeline). Searches without
    a chain (random, grid) run each study's trials back to back."""
    own = ends[p.study][-1] if ends[p.study] else 0.0
    larger = [b for b in search.batch_sizes if b > p.batch_size]
    if not larger or not (cascade or pipeline):
        return own
    nxt = f"bs{min(larger)}-seed{p.seed}"
    k = len(ends[p.study])
    if cascade:
        return max(own, ends[nxt][-1]) if k == 0 else own
    need = min(k + pipeline, finished_at.get(nxt, math.inf))
    return max(own, ends[nxt][need - 1])


def evaluate(result: dict, truth: dict) -> dict:
    opt = dict(zip(truth["batch_sizes"], truth["steps"], strict=True))
    found = result["best"]
    reached = [b for b in truth["batch_sizes"] if b in found]
    excess = [found[b] / opt[b] - 1 for b in reached]
    fit = fit_mccandlish(reached, [found[b] for b in reached]) if len(reached) >= 3 else None
    return {
        "b_crit_err": abs(fit.b_crit / truth["b_crit"] - 1) if fit else math.inf,
        "excess": float(np.mean(excess)) if excess else math.inf,
        "compute": result["compute"] / sum(truth["steps"]),
        "wall": result["wall"] / max(truth["steps"]),
        "miss": len(truth["batch_sizes"]) - len(reached),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="4,8,12,16,32", help="trials per batch size")
    ap.add_argument("--repeats", type=int, default=3, help="search seeds per (method, budget)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--smoke-test", action="store_true", help="dim 1000, 5 batch sizes, budget 4")
    args = ap.parse_args(argv)
    budgets = [int(x) for x in args.budgets.split(",")]
    sizes, options = list(REFERENCE_BATCH_SIZES), {"dim": 10_000, "max_reports": 100}
    if args.smoke_test:
        sizes, options, budgets, args.repeats = [16, 128, 1024, 8192, 65536], {"dim": 1000}, [4], 1
    t0 = time.perf_counter()
    truth = ground_truth(NQM(dim=options["dim"]), sizes, TARGET)
    print(f"truth: B_crit {truth['b_crit']:.1f}, S_min {truth['s_min']:.0f}, E_min {truth['e_min']:.4g}, "
          f"oracle compute {sum(truth['steps'])} steps ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(
        "| trials/B | search | B_crit error | mean excess steps | compute / oracle | wall / oracle | misses |"
    )
    print("|---|---|---|---|---|---|---|")
    for budget in budgets:
        for name in args.methods.split(","):
            rows = [
                evaluate(run_search(name, budget, seed, sizes, options), truth)
                for seed in range(args.repeats)
            ]
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            print(f"| {budget} | {name} | {100 * mean['b_crit_err']:.1f}% | {100 * mean['excess']:.2f}% | "
                  f"{mean['compute']:.2f}x | {mean['wall']:.1f}x | {mean['miss']:.1f} |", flush=True)  # fmt: skip
    print(f"({args.repeats} search seeds each; {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
