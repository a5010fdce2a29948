"""How efficient is the learning-rate search? Measured on the NQM, whose answer is exact.

On the reference noisy quadratic model (``nqm_exact``: dim 10^4, h_i = 1/i, c_i = h_i,
target 0.01, batch sizes 2^2..2^21; ground truth from :mod:`trainables.nqm_truth`), for each
budget of trials per batch size, six searches run side by side in-process (no Ray), all
through :class:`tune_jobs.lr_search.LRSearch` over the same LR range:

- ``parallel``: the same line search with every batch size in flight from the start
  (``LRSearch(parallel=True)``, the job field ``lr_search.parallel``): a coarse pass down from the top of the range, low placeholders
  until a provisional fit through the finished batch sizes predicts a study's best LR, and
  running first trials the fit moved away from withdrawn (``LRSearch.obsolete``);

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
fastest trial (``LRSearch.behind``, the job's ``lag_stop``), or once its smoothed loss closed
less than 1% of its distance to the target since half its current step count (a plateau at
its noise floor: it will not reach the target; the scheduler's ``early_stopping.plateau``
rule); ``parallel`` also withdraws obsolete ones.
The simulation is event-driven in simulated time (:func:`run_search`). Reported per
(search, budget), mean over ``--repeats`` search seeds:

- ``b_crit_err``: |B_crit fitted on the best steps found / true B_crit - 1|;
- ``excess``: mean over batch sizes of best steps found / optimal steps - 1 (a batch size where
  no trial reached the target counts as ``miss`` and is left out of the fit and the mean);
- ``compute``: sum of the steps every trial ran (early-stopped ones up to their stop), as a
  multiple of the oracle's: one run at the optimal LR per batch size;
- ``wall``: when the last trial ends with a worker for every trial in flight, in steps (a
  step the same time at every batch size), over the oracle's wall time (the slowest batch
  size's optimal steps): how much the search's order, not only its compute, costs;
- ``trials run / B``: trials started per batch size, withdrawn ones included (in brackets).

Run: ``.venv/bin/python benchmarks/search_efficiency.py [--budgets 4,8,12,16,32] [--repeats 3]``
(add ``--smoke-test`` for a 10-second check; ``--dim``, ``--target`` for other NQMs).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
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
from tune_jobs.config import EarlyStoppingConfig  # noqa: E402
from tune_jobs.job_file import load_job  # noqa: E402
from tune_jobs.lr_rules import plateaued  # noqa: E402
from tune_jobs.lr_search import WAIT, LRSearch, Outcome, Proposal  # noqa: E402

TARGET = 0.01
SLOTS = 0  # trials in flight at most (--slots); 0: unlimited
START_DELAY = 0.0  # time from a trial's ask to its first step (--start-delay)
MAX_STEPS = 10**7  # per trial, as in tune_jobs/jobs/nqm_reference.yaml
EVAL_EVERY = 100
PLATEAU = EarlyStoppingConfig().plateau  # the job default
PLATEAU_FROM = 2 * 5 * EVAL_EVERY  # as the scheduler: twice the default grace (5 evals)
LR_RANGE = (1e-3, 2.0)  # as in nqm_reference.yaml; the optima run from 0.014 to 1.995
# name -> (algorithm, cascade, pipeline lead, parallel)
METHODS = {
    "parallel": ("line_search", False, 0, True),
    "pipeline2": ("line_search", False, 2, False),
    "pipeline4": ("line_search", False, 4, False),
    "cascade": ("line_search", True, 0, False),
    "random": ("random", False, 0, False),
    "grid": ("grid", False, 0, False),
}
JOB = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs" / "nqm_reference.yaml"


def trial_reports(p: Proposal, options: dict) -> list[dict]:
    """Every report of one nqm_exact trial run to its end: the target, divergence,
    ``MAX_STEPS``, or a plateau above the target (the scheduler's rule,
    :func:`tune_jobs.lr_rules.plateaued` with the job default ``early_stopping.plateau`` on
    the trial's smoothed loss, from twice the default grace steps on), whichever comes
    first. A trial's reports do not depend on when it runs, so the event simulation
    (:func:`run_search`) replays them in simulated time and applies the stops that depend on
    the search's state (steps bound, lag, obsolete) as the reports arrive."""
    out: list[dict] = []
    target = Target("eval_loss", TARGET)
    steps, values = [], []

    def report(m: dict, checkpoint: dict | None = None) -> None:
        m = dict(m)
        steps.append(m["step"])
        values.append(m["eval_loss"])
        m["plateau"] = (
            m["status"] == Status.RUNNING
            and m["step"] >= PLATEAU_FROM
            and plateaued(steps, values, TARGET, True, PLATEAU, target.smoothing)
        )
        out.append(m)
        if m["plateau"]:
            raise _Stop

    cfg = TrialConfig(workload="nqm_exact", batch_size=p.batch_size, lr=p.lr, max_steps=MAX_STEPS,
                      eval_every=EVAL_EVERY, target=target, options=options)  # fmt: skip
    with contextlib.suppress(_Stop):
        train_exact(cfg, report)
    return out


class _Stop(Exception):
    pass


def run_search(method: str, budget: int, seed: int, sizes: list[int], options: dict) -> dict:
    """One search, event-driven in simulated time (one step = one time unit at every batch
    size), with a worker for every trial in flight: the searches that chain or pace their
    studies (cascade, pipeline, parallel) run what ``LRSearch.ask`` gives until it says
    WAIT; the others (random, grid) one trial in flight per study. Reports arrive in time
    order (ties: the trial started first); at each report a trial stops, as the Tune
    scheduler would stop it, once it reached the target or diverged, once it has run as many
    steps as the search's ``steps_bound`` for its batch size (censored there), at a plateau,
    once it lags its study's fastest trial (``LRSearch.behind``), or (parallel) once it is
    ``LRSearch.obsolete`` (withdrawn: no result). Every step run counts as compute, stopped
    and withdrawn trials' included."""
    algorithm, cascade, pipeline, parallel = METHODS[method]
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
        parallel=parallel,
    )
    paced = cascade or pipeline or parallel
    best: dict[int, float] = {}
    compute, wall, started, ended, withdrawn, withdrawn_steps = 0, 0.0, 0, 0, 0, 0
    queue: list[tuple[float, int, int]] = []  # (time, trial index, report index)
    trials: list[dict] = []
    busy: set[str] = set()
    by_size: dict[int, int] = {}  # batch size -> steps of its withdrawn trials
    log: list[tuple] = []  # (batch size, number, lr, status, steps run, end time) per trial

    def free() -> bool:  # a worker free (``--slots``: as many as a cluster has; 0: unlimited)
        return not SLOTS or started - ended < SLOTS

    def launch(now: float) -> None:
        nonlocal started
        props = []
        if paced:
            while free() and (p := search.ask()) not in (None, WAIT):
                props.append(p)
                started += 1
        else:
            for name, st in search.states.items():
                if name not in busy and st.asked < budget and not st.converged and free():
                    props.append(search.ask_study(name))
                    busy.add(name)
                    started += 1
        for p in props:
            busy.add(p.study)
            reports = trial_reports(p, options)
            start = now + START_DELAY  # a worker's start, in steps of time
            trials.append({"p": p, "start": start, "reports": reports, "best": math.inf})
            heapq.heappush(queue, (start + reports[0]["step"], len(trials) - 1, 0))

    launch(0.0)
    while queue:
        now, i, k = heapq.heappop(queue)
        t = trials[i]
        p, m = t["p"], t["reports"][k]
        t["best"] = min(t["best"], m["eval_loss"])
        curve = tuple((r["step"], r["eval_loss"]) for r in t["reports"][: k + 1])
        step, status, censored = m["step"], m["status"], None
        if status == Status.RUNNING:
            bound = search.steps_bound(p.study)
            if step >= bound:
                censored = bound  # as the Tune scheduler marks it: needed more steps
            elif m["plateau"] or search.behind(p.study, step, t["best"]):
                censored = step  # will not reach, or slower than the fastest
            elif search.obsolete(p):
                compute += int(step)
                wall = max(wall, now)
                withdrawn += 1
                withdrawn_steps += int(step)
                by_size[p.batch_size] = by_size.get(p.batch_size, 0) + int(step)
                log.append((p.batch_size, p.number, p.lr, "withdrawn", int(step), now))
                busy.discard(p.study)
                ended += 1
                search.withdraw(p)
                launch(now)
                continue
            elif k + 1 < len(t["reports"]):
                heapq.heappush(queue, (t["start"] + t["reports"][k + 1]["step"], i, k + 1))
                continue
            status = "stopped_early"
        steps = m.get("steps_to_target") if status == Status.REACHED else None
        best_loss = t["best"] if math.isfinite(t["best"]) else None
        out = Outcome(str(status), steps, best_loss, int(steps or step), censored, curve)
        compute += out.steps_run
        log.append((p.batch_size, p.number, p.lr, str(status), out.steps_run, now))
        wall = max(wall, now)
        busy.discard(p.study)
        ended += 1
        search.tell(p, out, MAX_STEPS, TARGET, "min")
        if steps is not None:
            best[p.batch_size] = min(best.get(p.batch_size, math.inf), steps)
        launch(now)
    return {"best": best, "compute": compute, "wall": wall, "started": started,
            "withdrawn": withdrawn, "withdrawn_steps": withdrawn_steps, "withdrawn_by_size": by_size,
            "studies": len(search.states), "log": log}  # fmt: skip


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
        "trials": result["started"] / result["studies"],
        "withdrawn": result["withdrawn"] / result["studies"],
    }


def main(argv: list[str] | None = None) -> int:
    global TARGET, LR_RANGE, SLOTS, START_DELAY
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="4,8,12,16,32", help="trials per batch size")
    ap.add_argument("--repeats", type=int, default=3, help="search seeds per (method, budget)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--smoke-test", action="store_true", help="dim 1000, 5 batch sizes, budget 4")
    ap.add_argument("--dim", type=int, default=10_000, help="NQM dimension (a held-out variant)")
    ap.add_argument("--target", type=float, default=0.01, help="target expected loss")
    ap.add_argument("--batch-sizes", default="", help="comma-separated (default: the reference)")
    ap.add_argument("--lr-min", type=float, default=LR_RANGE[0],
                    help="bottom of the LR range (nqm_small.yaml: 0.01)")  # fmt: skip
    ap.add_argument("--trace", action="store_true",
                    help="print every trial (batch size, number, LR, end, steps run, end time)")  # fmt: skip
    ap.add_argument("--slots", type=int, default=0,
                    help="trials in flight at most, as on a cluster of that many workers "
                         "(default 0: every trial the search asks for runs at once)")  # fmt: skip
    ap.add_argument("--start-delay", type=float, default=0.0,
                    help="steps of time from a trial's ask to its first step (a worker's start; "
                         "a paced real sweep's overhead per trial)")  # fmt: skip
    args = ap.parse_args(argv)
    SLOTS, START_DELAY = args.slots, args.start_delay
    budgets = [int(x) for x in args.budgets.split(",")]
    TARGET = args.target  # read by trial_reports and run_search
    sizes, options = list(REFERENCE_BATCH_SIZES), {"dim": args.dim, "max_reports": 100}
    if args.batch_sizes:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    LR_RANGE = (args.lr_min, LR_RANGE[1])
    if args.smoke_test:
        sizes, options, budgets, args.repeats = [16, 128, 1024, 8192, 65536], {"dim": 1000}, [4], 1
    t0 = time.perf_counter()
    truth = ground_truth(NQM(dim=options["dim"]), sizes, TARGET)
    print(f"truth: B_crit {truth['b_crit']:.1f}, S_min {truth['s_min']:.0f}, E_min {truth['e_min']:.4g}, "
          f"oracle compute {sum(truth['steps'])} steps ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    print(
        "| trials/B | search | B_crit error | mean excess steps | compute / oracle | wall / oracle "
        "| misses | trials run / B (withdrawn) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for budget in budgets:
        for name in args.methods.split(","):
            runs = [run_search(name, budget, seed, sizes, options) for seed in range(args.repeats)]
            rows = [evaluate(r, truth) for r in runs]
            for line in sorted(runs[0]["log"]) if args.trace else ():
                b, n, lr, status, steps, end = line
                print(f"  {name} B={b} #{n} lr {lr:.4g} {status} {steps} steps, ends t={end:.0f}")
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            print(f"| {budget} | {name} | {100 * mean['b_crit_err']:.1f}% | {100 * mean['excess']:.2f}% | "
                  f"{mean['compute']:.2f}x | {mean['wall']:.1f}x | {mean['miss']:.1f} | "
                  f"{mean['trials']:.1f} ({mean['withdrawn']:.1f}) |", flush=True)  # fmt: skip
    print(f"({args.repeats} search seeds each; {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
