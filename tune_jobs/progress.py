"""Progress while a sweep runs: per batch size, trials done and the search's fastest trial so
far (:func:`analysis.steps.best_per_batch_size`, the one definition of "best per batch size";
the sweep's estimate comes from its confirmation runs at the end)."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

from trainables.api import Status
from tune_jobs.config import JobConfig
from tune_jobs.confirm import PHASE


class ProgressCallback(Callback):
    """Prints one compact line per batch size when something changed (at most every few s)."""

    def __init__(self, job: JobConfig, every_s: float = 3.0, stream=None):
        self.job = job
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.done: dict[int, int] = dict.fromkeys(job.batch_sizes, 0)
        self.finished: list[dict] = []  # one row per finished search trial
        self.diverged: dict[int, int] = dict.fromkeys(job.batch_sizes, 0)
        self._last_print = 0.0
        self._dirty = False
        self.t0 = time.time()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["stream"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self.stream = sys.stdout

    def on_trial_complete(self, iteration, trials, trial, **info):
        b = trial.config["batch_size"]
        self.done[b] = self.done.get(b, 0) + 1
        last = trial.last_result or {}
        if last.get("status") == Status.DIVERGED:
            self.diverged[b] = self.diverged.get(b, 0) + 1
        s = last.get("steps_to_target")
        if trial.config.get("phase") != PHASE:
            self.finished.append({
                "strategy": trial.config.get("strategy", "tuned"), "batch_size": b,
                "trial": trial.trial_id, "lr": trial.config["lr"], "reached": s is not None,
                "steps": float("nan") if s is None else float(s),
                "examples": float("nan") if s is None else float(s) * b, "best_value": None,
            })  # fmt: skip
        self._dirty = True

    def on_step_begin(self, iteration, trials, **info):
        if self._dirty and time.time() - self._last_print > self.every_s:
            self.print_table()

    def on_experiment_end(self, trials, **info):
        self.print_table()

    def print_table(self) -> None:
        self._dirty = False
        self._last_print = time.time()
        per = self.job.trials_per_study * len(self.job.seeds)
        total = sum(self.done.values())
        best = {}
        if self.finished:
            import pandas as pd

            from analysis.steps import best_per_batch_size

            table = best_per_batch_size(pd.DataFrame(self.finished))
            best = {int(r.batch_size): (r.steps, r.lr) for r in table.itertuples() if r.n_reached}
        per += self.job.confirm_trials // len(self.job.batch_sizes)
        parts = []
        for b in self.job.batch_sizes:
            best_s = f"{best[b][0]:.0f} steps @ lr {best[b][1]:.3g}" if b in best else "-"
            parts.append(f"  bs {b:>6}: {self.done.get(b, 0):>3}/{per} trials  best {best_s}")
        head = f"[{time.time() - self.t0:6.1f}s] {total}/{self.job.total_trials} trials done"
        print(head + "\n" + "\n".join(parts), file=self.stream, flush=True)
