"""What `critbatch run` prints when a sweep ends: the sweep's :class:`analysis.summary.SweepSummary`.

The numbers come from :func:`analysis.summary.summarize` on the frame loaded back from MLflow,
the same call on the same frame as `critbatch analyze <parent run>`, so both print the same
B_crit, CI and verdict.
"""

from __future__ import annotations

from typing import Any


def sweep_summary(result: Any, job: Any, n_boot: int = 1000):
    """(summary, frame) of a finished sweep (a :class:`tune_jobs.sweep.SweepResult`); raises
    ValueError (an AnalysisError) when the data cannot be fitted, LookupError when MLflow does
    not hold the sweep (then `critbatch sync` first)."""
    import dataclasses

    from analysis import loaders
    from analysis.summary import summarize

    df = loaders.load(result.parent_run_id, result.tracking_uri)
    target = dataclasses.replace(job.target, rule="sweep target")  # as `analyze` reads it
    return summarize(df, target, n_boot=n_boot, lr_range=(job.lr_search.min, job.lr_search.max)), df


def trial_counts(trials: list[dict[str, Any]]) -> str:
    """One line: trials by final status (search and confirmation runs together)."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
