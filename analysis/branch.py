"""The local critical batch size along training, from branch results (Merrill et al. 2025).

The protocol, its pass rule and the local CBS (the largest passing k * B0) are defined once in
:mod:`trainables.branching`; this module applies them to measured branches, with an interval
over seeds, and turns the result into a batch-size schedule.

The frame of branch results, one row per (branch point, factor, seed):

==============  =====  ========================================================================
column          dtype  meaning
==============  =====  ========================================================================
``branch_at``   int    base-run step the branch started from
``factor``      int    k: the branch trained at batch k * B0 for window / k steps (1 included)
``batch_size``  int    k * B0, examples per step of the branch
``seed``        int    training seed; the branches of one seed share its base run and data
``loss``        float  the branch's smoothed loss at the end of its window (NaN/inf: diverged)
==============  =====  ========================================================================

Interval (:func:`local_cbs`): a paired percentile bootstrap over seeds. Each replicate draws the
seeds with replacement, keeping all the branches of a drawn seed together (they share a base
run), averages each factor's loss over the drawn seeds, and applies the pass rule to those
means; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
replicates' local CBS, taken as observed batch sizes (the CBS is discrete). The estimate
applies the rule to the means over all seeds. One seed: no interval (NaN).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.frame import AnalysisError
from trainables.branching import local_critical_batch_size, passes

BRANCH_COLUMNS = ("branch_at", "factor", "batch_size", "seed", "loss")


def validate_branch_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and that every seed has every factor at every branch point, with 1."""
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(
            f"expected a pandas DataFrame of branch results, got {type(df).__name__}"
        )
    missing = [c for c in BRANCH_COLUMNS if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"the branch frame lacks the column(s) {missing}; it has one row per (branch point, "
            f"factor, seed) with {list(BRANCH_COLUMNS)} (see analysis/branch.py)"
        )
    if df.empty:
        raise AnalysisError("the branch frame has no rows: no branch finished")
    base = df["batch_size"] / df["factor"]
    if base.nunique() != 1 or (df["factor"] < 1).any():
        raise AnalysisError(
            "batch_size must be factor x one base batch size B0 on every row, factor >= 1; "
            f"got batch_size / factor = {sorted(base.unique())[:5]}"
        )
    if df.duplicated(["branch_at", "factor", "seed"]).any():
        raise AnalysisError("the branch frame repeats a (branch_at, factor, seed): one row each")
    for t, g in df.groupby("branch_at"):
        if 1 not in set(g["factor"]):
            raise AnalysisError(f"branch point {t} has no factor-1 branch, the reference; run it")
        want = len(g["factor"].unique()) * len(g["seed"].unique())
        if len(g) != want:
            raise AnalysisError(
                f"branch point {t}: not every seed has every factor ({len(g)} of {want} "
                "branches); drop the incomplete seeds or rerun their branches"
            )
    return df


def _cbs_of_means(losses: np.ndarray, sizes: np.ndarray, ref: int, tolerance: float) -> float:
    """Local CBS from mean losses over the drawn seeds (rows: seeds, columns: factors)."""
    with np.errstate(invalid="ignore"):
        means = losses.mean(0)  # a diverged seed (inf / NaN) makes the mean fail, as it should
    ok = [bool(passes(float(x), float(means[ref]), tolerance)) for x in means]
    cbs = local_critical_batch_size(sizes.tolist(), ok)
    return math.nan if cbs is None else float(cbs)


def local_cbs(
    branches: pd.DataFrame,
    tolerance: float = 0.01,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per branch point: ``local_cbs`` (NaN: not even the k = 1 branch is finite), ``ci_low``,
    ``ci_high`` (NaN with one seed), ``seeds``, ``mean_loss`` and ``passes`` (dicts by batch
    size). Method in the module docstring."""
    df = validate_branch_frame(branches)
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise AnalysisError(f"tolerance {tolerance!r}: give a relative tolerance >= 0, e.g. 0.01")
    if not 0 < level < 1:
        raise AnalysisError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise AnalysisError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    rows = []
    for t, g in df.groupby("branch_at", sort=True):
        table = g.pivot(index="seed", columns="batch_size", values="loss").sort_index(axis=1)
        sizes = table.columns.to_numpy(int)
        ref = int(np.flatnonzero(sizes == sizes.min())[0])  # factor 1: the smallest batch size
        losses = table.to_numpy(float)
        cbs = _cbs_of_means(losses, sizes, ref, tolerance)
        means = losses.mean(0)
        lo = hi = math.nan
        n = losses.shape[0]
        if n > 1:
            draws = rng.integers(0, n, size=(n_boot, n))
            reps = np.array([_cbs_of_means(losses[d], sizes, ref, tolerance) for d in draws])
            reps = np.where(np.isnan(reps), 0.0, reps)  # no pass at all ranks below every size
            lo = float(np.quantile(reps, (1 - level) / 2, method="lower"))
            hi = float(np.quantile(reps, (1 + level) / 2, method="higher"))
            lo, hi = (math.nan if v == 0 else v for v in (lo, hi))
        rows.append(
            {
                "branch_at": int(t),
                "local_cbs": cbs,
                "ci_low": lo,
                "ci_high": hi,
                "seeds": n,
                "mean_loss": dict(zip(sizes.tolist(), means.tolist(), strict=True)),
                "passes": {
                    int(b): bool(passes(float(x), float(means[ref]), tolerance))
                    for b, x in zip(sizes, means, strict=True)
                },
            }
        )
    return pd.DataFrame(rows)


def round_to_batch_sizes(value: float, batch_sizes: list[int]) -> int:
    """The largest of ``batch_sizes`` <= ``value`` (the smallest one if none; NaN: the smallest)."""
    sizes = sorted(int(b) for b in batch_sizes)
    if not math.isfinite(value):
        return sizes[0]
    below = [b for b in sizes if b <= value]
    return below[-1] if below else sizes[0]


def batch_size_schedule(
    cbs: pd.DataFrame, base_batch_size: int, factors: list[int], column: str = "local_cbs"
) -> list[tuple[int, int]]:
    """A batch-size schedule that follows the local CBS: ``(examples, batch_size)`` pairs, each
    batch size used from that many examples on (examples = branch_at x B0, the base run's).

    ``cbs`` is :func:`local_cbs`'s frame; ``column`` picks the estimate (``local_cbs``) or the
    cautious ``ci_low``. Values are rounded down to the measured batch sizes k * B0; NaN (no
    branch passed) and the stretch before the first branch point use B0. Consecutive equal
    batch sizes merge.
    """
    if column not in cbs.columns:
        raise AnalysisError(f"column {column!r}: pick local_cbs or ci_low")
    sizes = [base_batch_size * int(k) for k in factors]
    schedule: list[tuple[int, int]] = []
    if cbs.empty or int(cbs["branch_at"].min()) > 0:
        schedule.append((0, base_batch_size))
    for t, value in zip(cbs["branch_at"], cbs[column], strict=True):
        b = round_to_batch_sizes(float(value), sizes)
        if not schedule or schedule[-1][1] != b:
            schedule.append((int(t) * base_batch_size, b))
    return schedule


def steps_saved(
    schedule: list[tuple[int, int]], total_examples: int, base_batch_size: int
) -> dict[str, float]:
    """Optimizer steps to process ``total_examples`` with ``schedule`` and with B0 throughout.

    Each stretch of the schedule takes ceil(its examples / its batch size) steps. Returns
    ``steps_schedule``, ``steps_constant``, ``steps_saved`` and ``saved_fraction``.
    """
    if total_examples < 1:
        raise AnalysisError(f"total_examples {total_examples}: give a positive number")
    ends = [e for e, _ in schedule[1:]] + [total_examples]
    steps = 0
    for (start, b), end in zip(schedule, ends, strict=True):
        steps += math.ceil(max(0, min(end, total_examples) - start) / b)
    constant = math.ceil(total_examples / base_batch_size)
    return {
        "steps_schedule": steps,
        "steps_constant": constant,
        "steps_saved": constant - steps,
        "saved_fraction": (constant - steps) / constant,
    }


def sweep_at_losses(
    df: pd.DataFrame, metric: str, losses: list[float], n_boot: int = 200
) -> pd.DataFrame:
    """A full sweep's B_crit (95% CI) and B_simple at each loss in ``losses``: the comparison
    Merrill et al. draw between the local CBS at a point of training and the critical batch
    size of reaching that point's loss from scratch (the sweep's steps to target at each
    batch size, :func:`analysis.summary.summarize`, with the loss as a ``min`` target on
    ``metric``). ``df``: the sweep's tidy frame. One row per loss: ``loss``, ``b_crit``,
    ``ci_low``, ``ci_high``, ``b_simple`` (NaN where not logged), ``note`` (why there is no
    B_crit, e.g. fewer than three batch sizes reach that loss)."""
    from analysis.steps import Target
    from analysis.summary import summarize

    if metric not in df.columns:
        raise AnalysisError(
            f"the sweep has no {metric!r} metric (it has the branches' compared loss); compare "
            "with a sweep that logs it"
        )
    rows = []
    for loss in losses:
        row = {"loss": float(loss), "b_crit": math.nan, "ci_low": math.nan,
               "ci_high": math.nan, "b_simple": math.nan, "note": ""}  # fmt: skip
        if not math.isfinite(loss):
            row["note"] = "no finite k = 1 loss"
            rows.append(row)
            continue
        try:
            s = summarize(df, Target(metric, float(loss), "min"), n_boot=n_boot)
        except AnalysisError as e:
            row["note"] = str(e)
            rows.append(row)
            continue
        lo, hi = s.cbs.b_crit_ci
        b = s.bsimple.get(s.strategy) or {}
        row.update(b_crit=float(s.cbs.b_crit), ci_low=float(lo), ci_high=float(hi),
                   b_simple=float(b.get("median", math.nan)))  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)
