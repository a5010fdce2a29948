"""The saved form of an :class:`~tune_jobs.lr_search.LRSearch` (the Tune searcher pickles it
in its checkpoint; a resumed sweep loads it): plain dicts keyed by study name, one per field
of :class:`~tune_jobs.lr_study.StudyState`, as earlier versions wrote them, so that a sweep
saved by one loads in another.

Optuna's own trials live in its storage (or in the searcher's checkpoint when in memory).
"""

from __future__ import annotations

from typing import Any

# ``search`` below is the :class:`~tune_jobs.lr_search.LRSearch` that calls these (its
# ``state``/``load_state``); typed as Any so that this module imports nothing of it (no cycle).


def dump(search: Any) -> dict:
    """The search's state as plain data (a study's entry only where it has one)."""
    st = search.states
    return {
        "asked": {k: v.asked for k, v in st.items()},
        "told": {k: v.told for k, v in st.items()},
        "range": {k: v.range for k, v in st.items()},
        "best": {k: v.best for k, v in st.items() if v.best is not None},
        "stop_bound": {k: v.stop_bound for k, v in st.items() if v.stop_bound is not None},
        "results": {k: dict(v.results) for k, v in st.items() if v.results},
        "diverged": {k: list(v.diverged) for k, v in st.items() if v.diverged},
        "unknown": {k: list(v.unknown) for k, v in st.items() if v.unknown},
        "curves": {k: list(v.curve) for k, v in st.items() if v.curve is not None},
        "done": sorted(k for k, v in st.items() if v.converged),
        "reached_cut": search.reached_cut,
        "sign": search.sign,
        "pending": list(search.pending),
        "history": {k: list(v.history) for k, v in st.items() if v.history},
        "basis": {k: dict(v.basis) for k, v in st.items() if v.basis},
        "withdrawn": {k: v.withdrawn for k, v in st.items() if v.withdrawn},
        "coarse": {k: list(v.coarse) for k, v in st.items() if v.coarse},
        "free": {k: v.free for k, v in st.items() if v.free},
    }


def restore(search: Any, state: dict) -> None:
    """Load :func:`dump`'s output (or an older version's, which lacks some keys) into the
    search's states. Entries of studies the search does not have are ignored, as they were
    when these were dicts of their own (a study's fields then were never read)."""
    states = search.states

    def each(key: str):
        for name, value in state.get(key, {}).items():
            if name in states:
                yield states[name], value

    for st, v in each("asked"):
        st.asked = v
    for st, v in each("told"):
        st.told = v
    for st, v in each("range"):
        st.range = tuple(v)
    for st, v in each("best"):
        st.best = tuple(v)
    for st, v in each("stop_bound"):
        st.stop_bound = v
    for st, v in each("results"):
        st.results = dict(v)
    for st, v in each("diverged"):
        st.diverged = list(v)
    for st, v in each("unknown"):
        st.unknown = list(v)
    for st, v in each("curves"):
        st.curve = [tuple(x) for x in v]
    for name in state.get("done", ()):
        if name in states:
            states[name].converged = True
    for st, v in each("history"):
        st.history = [(*h[:2], tuple(h[2]), *h[3:]) for h in v]
    for st, v in each("basis"):
        st.basis = {int(n): float(d) for n, d in v.items()}
    for st, v in each("withdrawn"):
        st.withdrawn = v
    for st, v in each("coarse"):
        st.coarse = [int(n) for n in v]
    for st, v in each("free"):
        st.free = v
    search.reached_cut = state.get("reached_cut", search.reached_cut)
    search.sign = state.get("sign", search.sign)
    search.pending = list(state.get("pending", []))
