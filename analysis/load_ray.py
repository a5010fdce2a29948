"""Read a Ray Tune run folder (``<storage>/<name>``) into the tidy frame: every trial
folder's ``result.json``, and the sweep's target from the folder's ``sweep.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from analysis.frame import PHASE_COLUMN
from analysis.load_tidy import SweepNotFoundError, tidy_frame, with_devices
from analysis.mlflow_layout import DEVICE_NAME, STEP_LR, is_tune_key
from trainables.api import final_status

CONCAT_BLOCK = 256  # trial frames concatenated at a time (load_ray_folder)


def load_ray_folder(path: str | os.PathLike) -> pd.DataFrame:
    """Every trial folder's ``result.json`` under ``path`` (a Tune experiment directory)."""
    path = Path(path)
    results = sorted(path.rglob("result.json"))
    if not results:
        raise SweepNotFoundError(
            f"no trial results (*/result.json) under {path}. Pass the Tune experiment folder "
            "(<storage>/<name>, default critbatch_runs/<name>) of a sweep that has started."
        )
    # Concatenated a block of trials at a time: ten thousand small frames held at once before
    # one concat cost the driver ~0.6 GiB at the end of a 10,000-trial sweep.
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
        raise SweepNotFoundError(f"every result.json under {path} is empty: no trial reported yet")
    df = pd.concat(blocks, ignore_index=True)
    del blocks, frames
    names = df.pop(DEVICE_NAME).dropna().unique() if DEVICE_NAME in df else []
    df = with_devices(tidy_frame(df), names)
    df.attrs["sweep_name"] = path.resolve().name  # the run folder is named after the job
    target = _folder_target(path)
    if target is not None:
        df.attrs["target"] = target
    return df


def _folder_target(path: Path) -> dict | None:
    """The job's target as the run folder's ``sweep.json`` records it (None: not recorded)."""
    try:
        t = json.loads((path / "sweep.json").read_text())["job"]["target"]
        return {"metric": str(t["metric"]), "value": float(t["value"]),
                "direction": str(t.get("direction", "min"))}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ray_trial_frame(result_json: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]
    if not rows:
        return pd.DataFrame()
    cfg = rows[-1].get("config", {})
    missing = [k for k in ("batch_size", "lr") if k not in cfg]
    if missing:
        raise ValueError(f"{result_json}: trial config lacks {missing}; not a critbatch trial")
    errored = any((result_json.parent / n).exists() for n in ("error.txt", "error.pkl"))
    status = final_status(rows[-1].get("status"), errored)
    metrics = pd.DataFrame([{k: v for k, v in r.items() if not is_tune_key(k)} for r in rows])
    metrics = metrics.rename(columns={"lr": STEP_LR}).drop(columns=["status"], errors="ignore")
    if "step" not in metrics:
        metrics["step"] = [r.get("training_iteration", i + 1) for i, r in enumerate(rows)]
    strategy = cfg.get("strategy", "tuned")
    return metrics.assign(
        trial=str(rows[-1].get("trial_id", result_json.parent.name)),
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        strategy=strategy.get("name", "tuned") if isinstance(strategy, dict) else strategy,
        seed=cfg.get("seed", 0),
        status=status,
        **({PHASE_COLUMN: cfg["phase"]} if "phase" in cfg else {}),  # optional column
    )
