"""Time and cost to target per batch size: steps become hours and device-hours.

Steps to target fall with B while examples to target rise; wall-clock is steps x step time,
and the step time depends on B and the hardware, so the fastest batch size and the cheapest
one differ (SCIENCE.md section 10). Per batch size, from its fastest trial to the target:

- ``time_to_target_h`` = steps x step time / 3600;
- ``device_hours`` = time x the devices one trial held (GPUs, fractions when several trials
  share one; CPUs when it had no GPU);
- ``examples_to_target`` = steps x B; ``cost`` = device-hours x ``price_per_device_hour``.

The step time of a trial is ``train_time / step`` (seconds in optimizer steps only, eval
excluded; reported by the training loop), else ``wall_time / step`` (eval included; a note
says so). Step time does not depend on the learning rate, so a batch size's step time is the
median over its trials: one slow trial on a shared host moves it little. A throughput table
(batch size -> steps per second, measured on the device the user will train on) replaces the
measured step times and re-costs the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.frame import AnalysisError

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class CostModel:
    """How steps become time and money. ``throughput``: columns ``batch_size`` and
    ``steps_per_second`` (optional ``devices``), measured on ``throughput_device``."""

    price_per_device_hour: float | None = None
    throughput: pd.DataFrame | None = None
    throughput_device: str | None = None

    def __post_init__(self) -> None:
        p = self.price_per_device_hour
        if p is not None and not (np.isfinite(p) and p > 0):
            raise AnalysisError(
                f"--price-per-device-hour must be a positive number (money per device-hour), got {p}"
            )
        if self.throughput is not None:
            check_throughput(self.throughput)


@dataclass
class CostTable:
    """Per (strategy, batch size): steps, step time, devices, time, device-hours, cost."""

    table: pd.DataFrame
    device_kind: str  # "GPU", "CPU" or "device" (the sweep did not record what it ran on)
    notes: list[str] = field(default_factory=list)
    price_per_device_hour: float | None = None


def check_throughput(table: pd.DataFrame) -> pd.DataFrame:
    """A throughput table, checked: positive batch sizes and steps per second, one row each."""
    missing = [c for c in ("batch_size", "steps_per_second") if c not in table.columns]
    if missing:
        raise AnalysisError(
            f"throughput table lacks column(s) {missing}; its header is "
            "batch_size,steps_per_second (optionally devices)"
        )
    for col in [c for c in ("batch_size", "steps_per_second", "devices") if c in table.columns]:
        values = pd.to_numeric(table[col], errors="coerce")
        if not (values > 0).all():
            bad = table.loc[~(values > 0), col].iloc[0]
            raise AnalysisError(f"throughput table: {col} = {bad!r} is not a positive number")
    if table["batch_size"].duplicated().any():
        dup = int(table.loc[table["batch_size"].duplicated(), "batch_size"].iloc[0])
        raise AnalysisError(f"throughput table: batch size {dup} appears twice; keep one row")
    return table


def load_throughput_csv(path: str | Path) -> pd.DataFrame:
    """``batch_size,steps_per_second[,devices]`` from a CSV file."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(
            f"--throughput: no file at {path}; give a CSV batch_size,steps_per_second"
        )
    return check_throughput(pd.read_csv(path, skipinitialspace=True))


def trial_step_times(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: trial, strategy, batch_size, step_time_s, clock (``train_time`` or
    ``wall_time``), gpus, cpus (NaN when the sweep did not record them)."""
    clock = "train_time" if "train_time" in df.columns else "wall_time"
    if clock not in df.columns:
        raise AnalysisError(
            "the frame has neither train_time nor wall_time: no step time to cost the steps "
            "with; pass a throughput table (--throughput batch_size,steps_per_second CSV)"
        )
    cols = ["trial", "strategy", "batch_size", "step", clock] + [
        c for c in ("gpus", "cpus") if c in df.columns
    ]
    timed = df[cols].dropna(subset=[clock])
    timed = timed[timed["step"] > 0].sort_values(["trial", "step"])
    last = timed.groupby("trial", sort=True).tail(1)
    out = last.assign(step_time_s=last[clock] / last["step"], clock=clock)
    for c in ("gpus", "cpus"):
        if c not in out.columns:
            out[c] = np.nan
    return out[["trial", "strategy", "batch_size", "step_time_s", "clock", "gpus", "cpus"]]


def _devices(row) -> tuple[float, str]:
    if row["gpus"] > 0:
        return float(row["gpus"]), "GPU"
    if row["cpus"] > 0:
        return float(row["cpus"]), "CPU"
    return 1.0, "device"


def time_and_cost(
    best: pd.DataFrame, df: pd.DataFrame, model: CostModel | None = None
) -> CostTable:
    """Time and cost to target per row of ``best`` (``analysis.steps.best_per_batch_size``:
    strategy, batch_size, steps), with step times from the tidy frame ``df``."""
    model = model or CostModel()
    notes: list[str] = []
    timed = "train_time" in df.columns or "wall_time" in df.columns
    per_trial = trial_step_times(df) if timed else None
    if not timed and model.throughput is None:
        notes.append(
            "no step times in this sweep (neither train_time nor wall_time): time and cost "
            "not computed; supply a throughput table (batch_size,steps_per_second) to cost it"
        )
    rows = []
    for _, r in best.iterrows():
        b, strategy = int(r["batch_size"]), r["strategy"]
        mine = (
            per_trial[(per_trial["batch_size"] == b) & (per_trial["strategy"] == strategy)]
            if per_trial is not None
            else pd.DataFrame()
        )
        measured = float(mine["step_time_s"].median()) if len(mine) else np.nan
        gpus = float(mine["gpus"].median()) if len(mine) else np.nan
        cpus = float(mine["cpus"].median()) if len(mine) else np.nan
        devices, kind = _devices({"gpus": gpus, "cpus": cpus})
        step_time = measured
        if model.throughput is not None:
            t = model.throughput[model.throughput["batch_size"] == b]
            if t.empty:
                raise AnalysisError(
                    f"throughput table has no row for batch size {b}; it covers "
                    f"{sorted(model.throughput['batch_size'].astype(int))}. Add one."
                )
            step_time = 1.0 / float(t["steps_per_second"].iloc[0])
            if "devices" in t.columns:
                devices = float(t["devices"].iloc[0])
        steps = float(r["steps"])
        hours = steps * step_time / SECONDS_PER_HOUR
        rows.append({
            "strategy": strategy, "batch_size": b, "steps": steps, "examples_to_target": steps * b,
            "step_time_s": step_time, "measured_step_time_s": measured, "devices": devices,
            "time_to_target_h": hours, "device_hours": hours * devices,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    kinds = sorted(
        {_devices({"gpus": g, "cpus": c})[1] for g, c in _device_counts(per_trial)} or {"device"}
    )
    kind = kinds[0] if len(kinds) == 1 else "device"
    if model.price_per_device_hour is not None and not table.empty:
        table["cost"] = table["device_hours"] * model.price_per_device_hour
    if per_trial is not None and len(per_trial) and per_trial["clock"].iloc[0] == "wall_time":
        notes.append(
            "step times are wall_time / step (eval included): this sweep predates train_time"
        )
    if kind == "device" and model.throughput is None:
        notes.append("the sweep did not record its devices: 1 device per trial assumed")
    measured_on = df.attrs.get("device_names") or []
    if model.throughput is not None:
        where = model.throughput_device or "the device the table was measured on"
        notes.append(
            f"times re-costed with the throughput table ({where}); the steps to target were "
            f"measured on {', '.join(measured_on) or 'an unrecorded device'}"
        )
        if model.throughput_device and measured_on and model.throughput_device not in measured_on:
            notes.append(
                f"step times measured on {', '.join(measured_on)}, not {model.throughput_device}"
            )
    elif measured_on:
        notes.append(
            f"step times measured on {', '.join(measured_on)}; on other hardware supply a "
            "throughput table (batch_size,steps_per_second) to re-cost the same steps"
        )
    return CostTable(table, kind, notes, model.price_per_device_hour)


def _device_counts(per_trial: pd.DataFrame | None) -> set[tuple[float, float]]:
    if per_trial is None or per_trial.empty:
        return set()
    return set(zip(per_trial["gpus"].fillna(0), per_trial["cpus"].fillna(0), strict=True))


def sweep_device_hours(df: pd.DataFrame) -> float:
    """Device-hours the whole sweep used: per trial its last ``wall_time`` x its devices (GPUs,
    else CPUs, else 1), summed. Eval and early-stopped trials count: they were paid for."""
    if "wall_time" not in df.columns:
        return float("nan")
    cols = ["trial", "step", "wall_time"] + [c for c in ("gpus", "cpus") if c in df.columns]
    last = df[cols].dropna(subset=["wall_time"]).sort_values(["trial", "step"])
    last = last.groupby("trial").tail(1)
    total = 0.0
    for _, r in last.iterrows():
        devices, _ = _devices({"gpus": r.get("gpus", np.nan), "cpus": r.get("cpus", np.nan)})
        total += float(r["wall_time"]) * devices / SECONDS_PER_HOUR
    return total


def pareto_front(
    table: pd.DataFrame, x: str = "time_to_target_h", y: str = "device_hours"
) -> pd.Series:
    """True for the rows no other row beats on both ``x`` and ``y`` (lower is better)."""
    ok = table[x].notna() & table[y].notna()
    vals = table.loc[ok, [x, y]].to_numpy(float)
    front = pd.Series(False, index=table.index)
    for i, idx in enumerate(table.index[ok]):
        others = np.delete(vals, i, axis=0)
        dominated = ((others <= vals[i]).all(1) & (others < vals[i]).any(1)).any()
        front[idx] = not dominated
    return front


def format_duration(hours: float) -> str:
    """0.0004 h -> '1.4 s'; 0.3 h -> '18 min'; 1.9 h -> '1.9 h'."""
    if not np.isfinite(hours):
        return "-"
    seconds = hours * SECONDS_PER_HOUR
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < SECONDS_PER_HOUR:
        return f"{seconds / 60:.3g} min"
    return f"{hours:.3g} h"
