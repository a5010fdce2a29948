"""analysis.load_ray.load_ray_folder reads a run folder column by column (one float array per
metric, no frame per trial) and tidy_frame copies no more than it must; both to keep a
10,000-trial sweep's end within the driver's memory (BENCHMARKS.md). The frame must be the
one the straightforward way gives: a pandas frame per trial from its reports, concatenated,
then tidied. That way is written out here as the reference, on folders with what a real one
can hold: metrics some reports lack, values that are not numbers, errored and empty trials,
trials without a step, a confirmation trial, a trial set aside under abandoned/ with the id
of a live one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import analysis.load_ray as load_ray
from analysis.frame import NON_METRIC_COLUMNS, PHASE_COLUMN, REQUIRED_COLUMNS
from analysis.load_ray import load_ray_folder
from analysis.load_tidy import with_devices
from analysis.mlflow_layout import DEVICE_NAME, STEP_LR, is_tune_key
from trainables.api import final_status
from tune_jobs.journal import append_record, iter_records, read_events, read_records

TUNE = {"time_total_s": 1.0, "done": False, "pid": 7, "node_ip": "127.0.0.1", "date": "d"}


def reference(path: Path) -> pd.DataFrame:
    """The frame as critbatch built it before the column reader (fb81cda), in one piece."""
    frames = []
    for f in sorted(path.rglob("result.json")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not rows:
            continue
        cfg = rows[-1].get("config", {})
        errored = any((f.parent / n).exists() for n in ("error.txt", "error.pkl"))
        m = pd.DataFrame([{k: v for k, v in r.items() if not is_tune_key(k)} for r in rows])
        m = m.rename(columns={"lr": STEP_LR}).drop(columns=["status"], errors="ignore")
        if "step" not in m:
            m["step"] = [r.get("training_iteration", i + 1) for i, r in enumerate(rows)]
        strategy = cfg.get("strategy", "tuned")
        frames.append(m.assign(
            trial=str(rows[-1].get("trial_id", f.parent.name)), batch_size=cfg["batch_size"],
            lr=cfg["lr"], seed=cfg.get("seed", 0), status=final_status(rows[-1].get("status"), errored),
            strategy=strategy.get("name", "tuned") if isinstance(strategy, dict) else strategy,
            **({PHASE_COLUMN: cfg["phase"]} if "phase" in cfg else {}),
        ))  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    names = df.pop(DEVICE_NAME).dropna().unique() if DEVICE_NAME in df else []
    if "examples" not in df:
        df["examples"] = df["step"] * df["batch_size"]
    df = df.dropna(subset=["step"])
    metrics = sorted(c for c in df.columns if c not in NON_METRIC_COLUMNS)
    phase = [PHASE_COLUMN] if PHASE_COLUMN in df.columns else []
    out = df[list(REQUIRED_COLUMNS) + phase + metrics].copy()
    if phase:
        out[PHASE_COLUMN] = out[PHASE_COLUMN].fillna("search").astype(str)
    out["examples"] = out["examples"].fillna(out["step"] * out["batch_size"])
    types = {"trial": str, "batch_size": int, "lr": float, "strategy": str, "seed": int}
    out = out.astype({**types, "step": int, "examples": int, "status": str})
    out[metrics] = out[metrics].apply(pd.to_numeric, errors="coerce").astype(float)
    out = out.sort_values(["batch_size", "trial", "step"], kind="stable")
    out = with_devices(out.reset_index(drop=True), names)
    out.attrs["sweep_name"] = path.resolve().name
    return out


def trial(root: Path, name: str, cfg: dict, reports: list[dict], error: bool = False) -> None:
    d = root / name
    d.mkdir(parents=True)
    lines = [
        json.dumps(r | TUNE | {"trial_id": name.split("_")[0], "config": cfg}) for r in reports
    ]
    (d / "result.json").write_text("".join(line + "\n" for line in lines))
    if error:
        (d / "error.txt").write_text("Traceback: boom")


def mixed_folder(root: Path) -> Path:
    run = root / "mixed"
    gpu = {DEVICE_NAME: "GPU X", "gpus": 1}
    trial(run, "aa01_1", {"batch_size": 64, "lr": 0.1, "seed": 1, "strategy": {"name": "tuned"}}, [
        {"step": 10, "examples": 640, "lr": 0.05, "train_loss": 2.5, "status": "running",
         "note": "1.5", "flag": True, "hist": [1, 2], "big": 2**70} | gpu,
        {"step": 20, "examples": 1280, "lr": 0.1, "train_loss": None, "eval_loss": 1.25,
         "note": "abc", "flag": False, "status": "running"} | gpu,
        {"step": 30, "examples": 1920, "lr": 0.1, "train_loss": math.nan, "eval_loss": 1,
         "note": " 2e3 ", "status": "reached", "batch_size": 999, "trial": "x"} | gpu,
    ])  # fmt: skip
    trial(run, "bb02_2", {"batch_size": 8, "lr": 0.3}, [  # no step: Tune's iteration
        {"training_iteration": 1, "train_loss": 3, DEVICE_NAME: None, "only_here": 1},
        {"training_iteration": 2, "train_loss": 2, "status": "running"},
    ], error=True)  # fmt: skip
    trial(run, "0c03_3", {"batch_size": 64, "lr": 0.1, "seed": 5, "phase": "confirm"}, [
        {"step": 200, "train_loss": 1.0, "status": "running"},  # out of order, no examples
        {"step": 100, "train_loss": 1.5, "status": "running"},
        {"step": None, "train_loss": 9.0},  # dropped: no step
    ])  # fmt: skip
    (run / "dd04_4").mkdir()
    (run / "dd04_4" / "result.json").write_text("\n")  # nothing reported
    trial(run, "ee05_5", {"batch_size": 32.0, "lr": 1, "strategy": "blr"}, [
        {"step": 5, "examples": 160.0, "train_loss": 0.5, "status": "diverged", "inf": math.inf},
    ])  # fmt: skip
    trial(run / "abandoned" / "20261202-000000", "aa01_9", {"batch_size": 64, "lr": 0.2}, [
        {"step": 10, "examples": 640, "train_loss": 7.0, "status": "running"},
    ])  # fmt: skip
    (run / "sweep.json").write_text(json.dumps({"job": {"target": {"metric": "train_loss",
                                                                   "value": 1.0}}}))  # fmt: skip
    return run


def assert_same(df: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(df, expected, check_exact=True)
    expected.attrs["target"] = {"metric": "train_loss", "value": 1.0, "direction": "min"}
    assert df.attrs == expected.attrs


def test_the_columns_give_the_frame_per_trial_frames_give(tmp_path, monkeypatch):
    run = mixed_folder(tmp_path)
    # the column reader alone (its fallback to per-trial frames is not taken here)
    monkeypatch.setattr(load_ray, "_read_trial_frames", None)
    df = load_ray_folder(run)
    assert_same(df, reference(run))
    assert df.attrs["device_names"] == ["GPU X"]
    assert set(df["status"]) == {"reached", "errored", "stopped_early", "diverged"}


@pytest.mark.parametrize("odd", [{"phase": "search"}, {STEP_LR: 0.5}])
def test_reports_the_columns_do_not_take_give_the_same_frame(tmp_path, odd):
    run = mixed_folder(tmp_path)
    trial(run, "ff06_6", {"batch_size": 16, "lr": 0.1}, [{"step": 1, "train_loss": 1.0} | odd])
    assert_same(load_ray_folder(run), reference(run))


def test_tidy_frame_leaves_its_input_as_it_was(tmp_path):
    from analysis.load_tidy import tidy_frame

    df = pd.DataFrame({"trial": ["b", "a"], "batch_size": [8, 8], "lr": [0.1, 0.1],
                       "strategy": ["tuned"] * 2, "seed": [0, 0], "step": [1.0, 2.0],
                       "examples": [8, None], "status": ["reached"] * 2, "m": ["1", "x"]})  # fmt: skip
    before = df.copy()
    out = tidy_frame(df)
    pd.testing.assert_frame_equal(df, before)
    assert list(out["trial"]) == ["a", "b"] and list(out["examples"]) == [16, 8]
    assert out["m"].tolist()[1] == 1.0 and math.isnan(out["m"].tolist()[0])


def test_journal_records_one_at_a_time(tmp_path):
    path = tmp_path / "finished.jsonl"
    for rec in ({"trial_id": "a", "row": 1}, {"event": "ask", "trial_id": "b"},
                {"trial_id": "a", "row": 2}, {"trial_id": "c", "row": 3}):  # fmt: skip
        append_record(path, rec)
    with path.open("a") as f:
        f.write('{"trial_id": "d", "ro')  # torn by a kill
    assert list(iter_records(path)) == read_records(path)
    assert [r["row"] for r in iter_records(path)] == [1, 3]
    assert len(read_events(path)) == 3
    assert list(iter_records(tmp_path / "none.jsonl")) == []
