"""Does the plateau stop (``early_stopping.plateau``) end only trials that will not reach?

On noisy training with a known answer: ``nqm_sgd`` (sampled SGD on the noisy quadratic model,
dim 100, h_i = 1/i, noise scale 1, target loss 0.05, as ``benchmarks/noisy_truth.py``'s p1 and
p4), each trial trained with its own seed and its smoothed loss read by the scheduler's rule
(:func:`tune_jobs.lr_rules.plateaued`, its level smoothed as the stop rule smooths, from twice
the default grace steps on). At each batch size, LRs at fractions of the exact optimum
(:func:`trainables.nqm_truth.optimal_lr`): below it the expected loss reaches the target, a
little above it (1.3x) it levels off above the target, and at 2x it stalls or diverges.

Reported per (momentum, batch size, LR factor), over ``--seeds`` training seeds: the exact
steps to target of the expected loss (``never``: it levels off above the target), how many
trials reached the target and their median steps, and how many the rule stopped and where.
A stop of a trial whose expected loss reaches the target is a false stop; the search then
counts it as needing more steps than it ran (censored), so a false stop at the best LR
would mislead the search.

Run: ``.venv/bin/python benchmarks/plateau_stop.py [--seeds 20] [--tolerance 0.01]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.api import Status, Target, TrialConfig  # noqa: E402
from trainables.nqm_truth import NQM, optimal_lr, steps_to_target  # noqa: E402
from trainables.workloads.nqm import train_sgd  # noqa: E402
from tune_jobs.config import EarlyStoppingConfig  # noqa: E402
from tune_jobs.lr_rules import plateaued  # noqa: E402

OPTIONS = {"dim": 100, "noise_scale": 1.0, "exponent": 1.0, "s0": 1.0}
TARGET = 0.05
EVAL_EVERY = 4
MAX_STEPS = 6_000
FACTORS = (0.7, 1.0, 1.15, 1.3, 2.0)


class _End(Exception):
    pass


def run(batch_size: int, lr: float, seed: int, momentum: float, tol: float) -> tuple[str, int]:
    """One trial to its end: ("reached" | "plateau" | its other status, the step)."""
    target = Target("eval_loss", TARGET)
    steps, values = [], []
    end: list[tuple[str, int]] = []

    def report(m: dict, checkpoint: dict | None = None) -> None:
        steps.append(m["step"])
        values.append(m["eval_loss"])
        if m["status"] != Status.RUNNING:
            end.append((str(m["status"]), m["step"]))
            raise _End
        if m["step"] >= 2 * 5 * EVAL_EVERY and plateaued(
            steps, values, TARGET, True, tol, target.smoothing
        ):
            end.append(("plateau", m["step"]))
            raise _End

    cfg = TrialConfig(workload="nqm_sgd", batch_size=batch_size, lr=lr, seed=seed,
                      max_steps=MAX_STEPS, eval_every=EVAL_EVERY, target=target,
                      momentum=momentum, options=OPTIONS)  # fmt: skip
    with contextlib.suppress(_End):
        train_sgd(cfg, report)
    return end[0] if end else ("not_reached", MAX_STEPS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=EarlyStoppingConfig().plateau)
    ap.add_argument("--momenta", default="0,0.9")
    ap.add_argument("--batch-sizes", default="4,16,64,256")
    args = ap.parse_args()
    nqm = NQM(OPTIONS["dim"], OPTIONS["exponent"], OPTIONS["noise_scale"], OPTIONS["s0"])
    t0 = time.perf_counter()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"plateau tolerance {args.tolerance:g}, {args.seeds} seeds per row")  # fmt: skip
    print("| momentum | B | LR / optimum | exact steps | reached (median steps) "
          "| plateau-stopped (median step) | false stops |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    false, reachable = 0, 0
    for momentum in map(float, args.momenta.split(",")):
        for b in map(int, args.batch_sizes.split(",")):
            lr, _ = optimal_lr(nqm, b, TARGET, momentum)
            for f in FACTORS:
                exact = steps_to_target(nqm, b, lr * f, TARGET, momentum, k_max=100_000)
                ends = [run(b, lr * f, s, momentum, args.tolerance) for s in range(args.seeds)]
                hit = [st for e, st in ends if e == "reached"]
                stop = [st for e, st in ends if e == "plateau"]
                other = sorted({e for e, _ in ends} - {"reached", "plateau"})
                fs = len(stop) if exact is not None else 0
                false += fs
                reachable += args.seeds if exact is not None else 0
                print(f"| {momentum:g} | {b} | {f:g} | {exact if exact is not None else 'never'} | "
                      f"{len(hit)} ({statistics.median(hit) if hit else '-'}) | "
                      f"{len(stop)} ({statistics.median(stop) if stop else '-'}) | "
                      f"{fs if exact is not None else '-'}{' ' + ','.join(other) if other else ''} |",
                      flush=True)  # fmt: skip
    print(f"false stops: {false} of {reachable} trials whose expected loss reaches the target; "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
