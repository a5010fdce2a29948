"""Is B_crit unbiased, and does its CI cover, on noisy training with a known answer?

``nqm_sgd`` (sampled SGD on the noisy quadratic model, :mod:`trainables.workloads.nqm`) on
several problems (dimension, noise scale, target, with and without momentum); the exact
answer of each problem comes from :func:`trainables.nqm_truth.ground_truth` (`critbatch nqm`:
optimal LR and exact steps of the expected loss per batch size, fitted).

Each sweep is driven in-process, without Ray (as ``benchmarks/search_efficiency.py``): the
same :class:`tune_jobs.lr_search.LRSearch` (the job defaults: line search, convergence stop,
lag stop; trials of a study stopped at its steps bound, as the Tune scheduler does, ASHA
left out), the same :class:`tune_jobs.confirm.Confirmation`, the same trainable
(``train_sgd``, with the job's stop rule), and the same analysis
(:func:`analysis.summary.summarize` on the tidy frame the reports make). Per problem,
``--repeats`` sweeps with independent seeds (training seed r, LR-search seed r), twice:

- ``before``: today's estimator before this change: raw stop rule, no confirmation runs,
  steps to target = the fastest search trial per batch size;
- ``after``: the defaults now: EMA stop rule (beta 0.8), ``confirm_seeds`` confirmation runs,
  steps = crossing of their mean curve, CI from resampling the confirmation seeds.

Reported per (problem, estimator): bias of B_crit (median and mean of estimate / truth - 1),
coverage of the 95% CI over the repeats, median CI width (hi / lo), and compute: steps run
by all trials over the oracle's (one run per batch size at the optimal LR, exact steps).

``--plateau 0,0.01`` runs each estimator with the plateau stop off and on (search trials only;
the job default is ``early_stopping.plateau: 0.01``; the figures before it had none).

Run: ``.venv/bin/python benchmarks/noisy_truth.py [--repeats 10] [--problems p1,p2]``
(``--smoke-test``: one problem, 2 repeats).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.ground_truth import ground_truth  # noqa: E402
from analysis.summary import summarize  # noqa: E402
from trainables.api import Status, Target, TrialConfig  # noqa: E402
from trainables.nqm_truth import NQM  # noqa: E402
from trainables.workloads.nqm import train_sgd  # noqa: E402
from tune_jobs.config import LRSearchConfig  # noqa: E402
from tune_jobs.confirm import PHASE, Confirmation  # noqa: E402
from tune_jobs.lr_rules import plateaued  # noqa: E402
from tune_jobs.lr_search import WAIT, LRSearch, Outcome, Proposal  # noqa: E402

# name: (options, target, momentum, batch sizes)
PROBLEMS = {
    "p1": ({"dim": 100, "noise_scale": 1.0}, 0.05, 0.0, [4, 16, 64, 256, 1024, 4096]),
    "p2": ({"dim": 100, "noise_scale": 4.0}, 0.05, 0.0, [16, 64, 256, 1024, 4096, 16384]),
    "p3": ({"dim": 300, "noise_scale": 1.0}, 0.1, 0.0, [4, 16, 64, 256, 1024, 4096]),
    "p4": ({"dim": 100, "noise_scale": 1.0}, 0.05, 0.9, [4, 16, 64, 256, 1024, 4096]),
}
LR_RANGE = (1e-3, 2.0)
EVAL_EVERY = 4  # steps between a search trial's evals (S_min is about 30-80 steps here)
MAX_STEPS = 6_000  # > 3.5x the largest exact S of these problems (1584)
TRIALS = LRSearchConfig().trials_per_batch_size


class _Stop(Exception):
    pass


def run_trial(
    p: Proposal, problem, smoothing, fields, bound, search, rows, tag, plateau=0.0
) -> Outcome:
    """One nqm_sgd trial; its reports appended to ``rows``. A search trial stops at its
    study's steps bound, when it lags the study's fastest trial (``search`` given), or, with
    ``plateau`` > 0, when its smoothed loss has stalled short of the target (the scheduler's
    ``early_stopping.plateau`` rule, from twice the default grace steps on)."""
    options, target, momentum, _ = problem
    cfg = TrialConfig(
        workload="nqm_sgd", batch_size=p.batch_size, lr=p.lr, seed=p.seed,
        max_steps=fields.get("max_steps", MAX_STEPS), eval_every=fields.get("eval_every", EVAL_EVERY),
        target=Target("eval_loss", target, "min", smoothing), momentum=momentum,
        options={"exponent": 1.0, "s0": 1.0, **options},
        run_to_max_steps=fields.get("run_to_max_steps", False),
    )  # fmt: skip
    seen = {"step": 0, "best": math.inf, "status": "", "steps": None, "censored": None}
    curve: list[tuple[float, float]] = []
    steps, values = [], []
    trial = f"{tag}-{p.study}-{p.seed}-{p.number}"

    def report(m: dict, checkpoint: dict | None = None) -> None:
        seen["step"], seen["status"] = m["step"], m["status"]
        seen["best"] = min(seen["best"], m["eval_loss"])
        curve.append((m["step"], m["eval_loss"]))
        rows.append({"trial": trial, "step": m["step"], "eval_loss": m["eval_loss"]})
        if m["status"] == Status.REACHED:
            seen["steps"] = m["steps_to_target"]
        elif search is not None and m["status"] == Status.RUNNING:
            if m["step"] >= bound:
                seen["censored"] = bound
                raise _Stop
            if search.behind(p.study, m["step"], seen["best"]):
                seen["censored"] = m["step"]
                raise _Stop
            steps.append(m["step"])
            values.append(m["eval_loss"])
            if (
                plateau
                and m["step"] >= 2 * 5 * EVAL_EVERY
                and plateaued(steps, values, target, True, plateau, smoothing)
            ):
                seen["censored"] = m["step"]
                raise _Stop

    try:
        train_sgd(cfg, report)
    except _Stop:
        seen["status"] = "stopped_early"
    rows.append({"trial": trial, "status": seen["status"], "batch_size": p.batch_size,
                 "lr": p.lr, "seed": p.seed, "phase": "search" if search else PHASE})  # fmt: skip
    best = seen["best"] if math.isfinite(seen["best"]) else None
    return Outcome(str(seen["status"]), seen["steps"], best, int(seen["step"]),
                   seen["censored"], tuple(curve))  # fmt: skip


def run_sweep(
    problem, repeat: int, after: bool, confirm_seeds: int, plateau: float = 0.0
) -> tuple[pd.DataFrame, int]:
    """One sweep in-process; its tidy frame and the steps all its trials ran."""
    _, target, _, sizes = problem
    smoothing = Target().smoothing if after else 0.0
    d = LRSearchConfig()
    search = LRSearch(
        sizes, [repeat], *LR_RANGE, n_trials=TRIALS, seed=repeat, algorithm=d.algorithm,
        synchronous=False, converge_tol=d.convergence_tolerance, lag=d.lag_stop,
    )  # fmt: skip
    confirm = Confirmation(confirm_seeds if after else 0, EVAL_EVERY)
    rows: list[dict] = []
    compute = 0
    while True:
        p = confirm.ask(search)
        if p is not None:
            fields = confirm.trial_fields(search, p.study, MAX_STEPS)
            out = run_trial(p, problem, smoothing, fields, math.inf, None, rows, "c")
            compute += out.steps_run
            continue
        p = search.ask()
        if p is None:
            break
        assert p != WAIT  # sequential: every trial is told before the next ask
        out = run_trial(
            p, problem, smoothing, {}, search.steps_bound(p.study), search, rows, "s", plateau
        )
        compute += out.steps_run
        search.tell(p, out, MAX_STEPS, target, "min")
    return _frame(rows), compute


def _frame(rows: list[dict]) -> pd.DataFrame:
    points = pd.DataFrame([r for r in rows if "step" in r])
    meta = pd.DataFrame([r for r in rows if "step" not in r])
    df = points.merge(meta, on="trial")
    df["examples"] = df["step"] * df["batch_size"]
    df["strategy"] = "tuned"
    return df


def measure(
    name: str, repeats: int, confirm_seeds: int, estimators=("before", "after"), plateaus=(0.0,)
) -> list[dict]:
    problem = PROBLEMS[name]
    options, target, momentum, sizes = problem
    nqm = NQM(options["dim"], 1.0, options["noise_scale"], 1.0)
    truth = ground_truth(nqm, sizes, target, momentum)
    oracle = float(sum(truth["steps"]))
    out = []
    for after, plateau in [(e == "after", pl) for e in estimators for pl in plateaus]:
        label = ("after" if after else "before") + (f", plateau {plateau:g}" if plateau else "")
        for r in range(repeats):
            t0 = time.perf_counter()
            df, compute = run_sweep(problem, r, after, confirm_seeds, plateau)
            try:
                s = summarize(df, Target("eval_loss", target, "min"), n_boot=1000, seed=r)
                b, (lo, hi) = s.cbs.b_crit, s.cbs.b_crit_ci
            except ValueError:
                b, lo, hi = math.nan, math.nan, math.nan
            out.append({"problem": name, "estimator": label, "repeat": r,
                        "b_crit": b, "lo": lo, "hi": hi, "truth": truth["b_crit"],
                        "compute": compute / oracle, "seconds": time.perf_counter() - t0})  # fmt: skip
            print(f"  {name} {label} r{r}: B_crit {b:.4g} "
                  f"[{lo:.4g}, {hi:.4g}] truth {truth['b_crit']:.4g}; compute {compute / oracle:.1f}x "
                  f"oracle; {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    return out


def table(results: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(results)
    df["ratio"] = df["b_crit"] / df["truth"] - 1
    df["covered"] = (df["lo"] <= df["truth"]) & (df["truth"] <= df["hi"])
    df["width"] = df["hi"] / df["lo"]
    g = df.groupby(["problem", "estimator"], sort=True)
    return pd.DataFrame({
        "truth": g["truth"].first(), "sweeps": g.size(),
        "median_bias": g["ratio"].median(), "mean_bias": g["ratio"].mean(),
        "coverage": g["covered"].mean(), "ci_width_x": g["width"].median(),
        "compute_x_oracle": g["compute"].median(),
    }).reset_index()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--confirm-seeds", type=int, default=LRSearchConfig().confirm_seeds)
    ap.add_argument("--estimators", default="before,after", help="before, after or both")
    ap.add_argument("--plateau", default="0",
                    help="early_stopping.plateau values for search trials (0: the rule off)")  # fmt: skip
    ap.add_argument("--smoke-test", action="store_true")
    args = ap.parse_args(argv)
    names = ["p1"] if args.smoke_test else args.problems.split(",")
    repeats = 2 if args.smoke_test else args.repeats
    results = []
    for name in names:
        results += measure(name, repeats, args.confirm_seeds, args.estimators.split(","),
                           [float(x) for x in args.plateau.split(",")])  # fmt: skip
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        print(table(results).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
