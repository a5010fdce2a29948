"""The tidy frame contract (analysis.frame) and a synthetic sweep builder the other
analysis tests share: loss curves whose steps to target follow a known hyperbola."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.frame import REQUIRED_COLUMNS, AnalysisError, metric_columns, validate_frame

S_MIN, B_CRIT = 400.0, 128.0  # steps, examples per step: the truth the synthetic sweeps follow
BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512, 1024]
TARGET = 1.0  # train_loss to reach (nats)


def true_steps(b) -> np.ndarray:
    return S_MIN * (1.0 + B_CRIT / np.asarray(b, dtype=float))


def make_sweep_frame(
    batch_sizes=BATCH_SIZES,
    lr_multipliers=(0.5, 1.0, 2.0),
    seeds=(0,),
    strategy: str = "tuned",
    eval_every: int = 10,
    noise: float = 0.0,
    rng_seed: int = 0,
) -> pd.DataFrame:
    """A tidy sweep frame. train_loss falls linearly in steps from 3.0 to the target 1.0 at the
    trial's steps-to-target, then on to a floor of 0.5, so interpolating the crossing is exact.
    The best LR at batch size B is 0.1 * sqrt(B / 8); a trial at lr = m * best needs
    (1 + log2(m)^2) times the true steps (times exp(noise * N(0, 1)) per trial)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for b in batch_sizes:
        best_lr = 0.1 * np.sqrt(b / 8)
        for seed in seeds:
            for m in lr_multipliers:
                s = true_steps(b) * (1 + np.log2(m) ** 2) * np.exp(noise * rng.normal())
                trial = f"bs{b}-seed{seed}-lr{m}-{strategy}"
                last = int(np.ceil(1.6 * s / eval_every) * eval_every)
                steps = np.arange(0, last + 1, eval_every)
                loss = np.maximum(3.0 - 2.0 * steps / s, 0.5)
                acc = 0.5 + 0.4 * (3.0 - loss) / 2.5 - 0.0001 * b  # accuracy that decays with B
                status = "reached"
                for st, lo, ac in zip(steps, loss, acc, strict=True):
                    rows.append(
                        dict(trial=trial, batch_size=b, lr=best_lr * m, strategy=strategy,
                             seed=seed, step=int(st), examples=int(st) * b, status=status,
                             train_loss=lo, eval_accuracy=ac)
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_validate_frame_names_every_missing_column():
    df = make_sweep_frame(batch_sizes=[8, 16, 32])
    assert validate_frame(df) is df
    with pytest.raises(AnalysisError, match=r"\['lr', 'status'\]"):
        validate_frame(df.drop(columns=["lr", "status"]))
    with pytest.raises(AnalysisError, match="no metric column.*eval_loss"):
        validate_frame(df, ["eval_loss"])
    with pytest.raises(AnalysisError, match="no rows"):
        validate_frame(df.iloc[:0])


def test_metric_columns_are_the_non_required_ones():
    df = make_sweep_frame(batch_sizes=[8])
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    assert metric_columns(df) == ["train_loss", "eval_accuracy"]
