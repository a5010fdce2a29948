"""Analysis: from one tidy DataFrame of training curves to the critical batch size.

Pure functions over the frame documented in `analysis.frame` (steps to target, speedup, the
McCandlish and overhead fits with bootstrap intervals, best learning rate versus batch size),
plots, and a self-contained HTML report. Reading MLflow, Ray folders and CSVs happens only in
`analysis.loaders` and the `analysis.load_*` modules behind it; the `critbatch analyze` and
`critbatch fit` commands that drive them live in `tune_jobs.cli.analyze`.
"""


def __getattr__(name: str):
    """``from analysis import analyze`` (:mod:`analysis.notebook`), imported on first use."""
    if name in ("analyze", "AnalysisOutcome"):
        from analysis import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
