"""Read a Ray Tune run folder (``<storage>/<name>``) into the tidy frame: every trial
folder's ``result.json``, and the sweep's target from the folder's ``sweep.json``."""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.frame import PHASE_COLUMN
from analysis.load_tidy import SweepNotFoundError, tidy_frame, with_devices
from analysis.mlflow_layout import DEVICE_NAME, STEP_LR, is_tune_key
from analysis.packets import points_of
from trainables.api import final_status

CONCAT_BLOCK = 256  # trial frames concatenated at a time (the per-trial frames' path)
_NAN = float("nan")


def load_ray_folder(path: str | os.PathLike) -> pd.DataFrame:
    """Every trial folder's ``result.json`` under ``path`` (a Tune experiment directory)."""
    path = Path(path)
    results = sorted(path.rglob("result.json"))
    if not results:
        raise SweepNotFoundError(
            f"no trial results (*/result.json) under {path}. Pass the Tune experiment folder "
            "(<storage>/<name>, default critbatch_runs/<name>) of a sweep that has started."
        )
    # Read column by column (one float array per metric): at the end of a 10,000-trial sweep
    # per-trial frames cost the driver ~190 MiB more at their peak (BENCHMARKS.md). Reports
    # the columns cannot hold go through the per-trial frames, which give the same frame.
    try:
        df, names = _ColumnReader().read(results)
    except _Unusual:
        df, names = _read_trial_frames(results)
    if df is None:
        raise SweepNotFoundError(f"every result.json under {path} is empty: no trial reported yet")
    df = with_devices(tidy_frame(df), names)
    df.attrs["sweep_name"] = path.resolve().name  # the run folder is named after the job
    target = _folder_target(path)
    if target is not None:
        df.attrs["target"] = target
    return df


class _Unusual(Exception):
    """A report the column reader does not take (a ``phase`` or ``lr_at_step`` key, a step or
    an example count that is not a number): the per-trial frames read the folder instead."""


# Report keys that are not columns: set on every row from the trial's config instead
# (DataFrame.assign over the report's own), or the trial's final status instead of the report's.
_OVERRIDDEN = frozenset({"trial", "batch_size", "strategy", "seed", "status"})
_TRIAL_KEYS = ("trial", "batch_size", "lr", "strategy", "seed", "status")


class _ColumnReader:
    """The frame of :func:`_read_trial_frames` without a frame per trial: every numeric column
    is one float64 array over all rows (NaN where a report lacks the key), the trial's own
    columns one value per trial, repeated. Values that are not numbers become what
    ``tidy_frame``'s ``pd.to_numeric(errors="coerce")`` makes of them."""

    def __init__(self) -> None:
        self.rows = 0
        self.columns: dict[str, array] = {}
        self.trials: list[tuple] = []  # _TRIAL_KEYS (+ phase) of each trial
        self.counts: list[int] = []  # its rows
        self.devices: dict = {}  # device names seen, in order
        self.names: dict[str, str | None] = {}  # report key -> column (None: not one)
        self.numbers: dict = {}  # odd metric value -> the float it becomes

    def read(self, results: list[Path]) -> tuple[pd.DataFrame | None, list]:
        for f in results:
            self._trial(f)
        if not self.rows:
            return None, []
        # Trials in tidy_frame's order (batch size, trial; stable), so that its sort finds the
        # rows in order and copies nothing (it still sorts: this order is only a head start).
        order = self._tidy_order()
        trials = [self.trials[i] for i in order]
        counts = [self.counts[i] for i in order]
        starts = np.cumsum([0, *self.counts[:-1]])
        rows = np.concatenate([np.arange(starts[i], starts[i] + self.counts[i]) for i in order])
        data: dict = {}
        for i, key in enumerate(_TRIAL_KEYS):
            data[key] = _repeat([t[i] for t in trials], counts)
        if any(len(t) > len(_TRIAL_KEYS) for t in trials):
            phases = [t[-1] if len(t) > len(_TRIAL_KEYS) else _NAN for t in trials]
            data[PHASE_COLUMN] = _repeat(phases, counts)
        while self.columns:  # one column at a time: each array freed once reordered
            key, col = self.columns.popitem()
            col.extend(array("d", [_NAN]) * (self.rows - len(col)))
            data[key] = np.frombuffer(col, dtype=np.float64)[rows]
            del col
        return pd.DataFrame(data, copy=False), list(self.devices)

    def _tidy_order(self) -> list[int]:
        keys = pd.DataFrame({"b": [t[1] for t in self.trials], "t": [t[0] for t in self.trials]})
        try:
            keys = keys.astype({"b": int, "t": str})
        except (TypeError, ValueError, OverflowError):  # tidy_frame will say what is wrong
            return list(range(len(self.trials)))
        return list(keys.sort_values(["b", "t"], kind="stable").index)

    def _trial(self, result_json: Path) -> None:
        rows = _reports(result_json)
        if not rows:
            return
        trial = _trial_values(result_json, rows)
        start = self.rows
        for row in rows:
            for key, value in row.items():
                name = self.names.get(key, "")
                if name == "":
                    name = self.names[key] = self._name(key)
                if name is None:
                    continue
                if name == DEVICE_NAME:
                    if value is not None and value == value:
                        try:
                            self.devices[value] = None
                        except TypeError as e:  # a list, a dict
                            raise _Unusual(key) from e
                    continue
                col = self.columns.get(name)
                if col is None:
                    col = self.columns[name] = array("d")
                if len(col) < self.rows:
                    col.extend(array("d", [_NAN]) * (self.rows - len(col)))
                col.append(self._number(name, value))
            self.rows += 1
        steps = self.columns.get("step")
        if steps is None or len(steps) <= start:  # no report had a step: Tune's iteration
            steps = self.columns.setdefault("step", array("d"))
            steps.extend(array("d", [_NAN]) * (start - len(steps)))
            for i, r in enumerate(rows):
                steps.append(self._number("step", r.get("training_iteration", i + 1)))
        self.trials.append(trial)
        self.counts.append(len(rows))

    @staticmethod
    def _name(key: str) -> str | None:
        if is_tune_key(key) or key in _OVERRIDDEN:
            return None
        if key in (PHASE_COLUMN, STEP_LR):  # a report's phase, or two lr_at_step columns
            raise _Unusual(key)
        return STEP_LR if key == "lr" else key

    def _number(self, name: str, value) -> float:
        kind = type(value)
        if kind is float:
            return value
        if kind is int and -(2**63) <= value < 2**63:
            return float(value)
        if value is None:
            return _NAN
        if name in ("step", "examples"):  # cast to int by tidy_frame, not coerced
            raise _Unusual(name)
        try:
            return self.numbers[value]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list, a dict): not cached
            return _coerced(value)
        number = self.numbers[value] = _coerced(value)
        return number


def _reports(result_json: Path) -> list[dict]:
    """A trial's reports in order: each line of its ``result.json`` is one, or a packet of
    several (analysis/packets.py), read as a row each."""
    lines = result_json.read_text().splitlines()
    return [p for line in lines if line.strip() for p in points_of(json.loads(line))]


def _coerced(value) -> float:
    """What ``tidy_frame`` makes of a metric value that is not a number (NaN, or the number a
    string spells, 1.0 for True)."""
    return float(pd.to_numeric(pd.Series([value], dtype=object), errors="coerce").iloc[0])


def _repeat(values: list, counts: list[int]) -> pd.Series:
    return pd.Series(values).repeat(counts).reset_index(drop=True)


def _trial_values(result_json: Path, rows: list[dict]) -> tuple:
    """The trial's own columns (_TRIAL_KEYS, then its phase when its config has one)."""
    cfg = rows[-1].get("config", {})
    missing = [k for k in ("batch_size", "lr") if k not in cfg]
    if missing:
        raise ValueError(f"{result_json}: trial config lacks {missing}; not a critbatch trial")
    errored = any((result_json.parent / n).exists() for n in ("error.txt", "error.pkl"))
    strategy = cfg.get("strategy", "tuned")
    values = (
        str(rows[-1].get("trial_id", result_json.parent.name)),
        cfg["batch_size"],
        cfg["lr"],
        strategy.get("name", "tuned") if isinstance(strategy, dict) else strategy,
        cfg.get("seed", 0),
        final_status(rows[-1].get("status"), errored),
    )
    return (*values, cfg["phase"]) if "phase" in cfg else values


def _read_trial_frames(results: list[Path]) -> tuple[pd.DataFrame | None, list]:
    """One frame per trial, concatenated a block at a time (the reference the column reader
    gives the same frame as)."""
    blocks, frames = [], []
    for f in results:
        frame = _ray_trial_frame(f)
        if not frame.empty:
            frames.append(frame)
        if len(frames) == CONCAT_BLOCK:
            blocks.append(pd.concat(frames, ignore_index=True))
            frames = []
    if frames:
        blocks.append(pd.concat(frames, ignore_index=True))
    if not blocks:
        return None, []
    df = pd.concat(blocks, ignore_index=True)
    del blocks, frames
    names = df.pop(DEVICE_NAME).dropna().unique() if DEVICE_NAME in df else []
    return df, list(names)


def _folder_target(path: Path) -> dict | None:
    """The job's target as the run folder's ``sweep.json`` records it (None: not recorded)."""
    try:
        t = json.loads((path / "sweep.json").read_text())["job"]["target"]
        return {"metric": str(t["metric"]), "value": float(t["value"]),
                "direction": str(t.get("direction", "min"))}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ray_trial_frame(result_json: Path) -> pd.DataFrame:
    rows = _reports(result_json)
    if not rows:
        return pd.DataFrame()
    values = _trial_values(result_json, rows)
    metrics = pd.DataFrame([{k: v for k, v in r.items() if not is_tune_key(k)} for r in rows])
    metrics = metrics.rename(columns={"lr": STEP_LR}).drop(columns=["status"], errors="ignore")
    if "step" not in metrics:
        metrics["step"] = [r.get("training_iteration", i + 1) for i, r in enumerate(rows)]
    own = dict(zip(_TRIAL_KEYS, values, strict=False))
    if len(values) > len(_TRIAL_KEYS):
        own[PHASE_COLUMN] = values[-1]  # optional column
    return metrics.assign(**own)
