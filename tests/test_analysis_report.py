"""Figures and the self-contained HTML report, on a synthetic sweep with a known B_crit."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from test_analysis_frames import B_CRIT, S_MIN, make_sweep_frame

from analysis import plots
from analysis.frame import AnalysisError
from analysis.report import write_report
from analysis.steps import Target

SIZES = [8, 32, 128, 512, 2048]


@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    tuned = make_sweep_frame(SIZES, lr_multipliers=(0.5, 1.0), seeds=(0, 1), noise=0.05)
    lsr = make_sweep_frame(SIZES, lr_multipliers=(1.0,), strategy="lsr", noise=0.1, rng_seed=1)
    return pd.concat([tuned, lsr])  # index repeats on purpose: functions must not rely on it


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(sweep, out, Target("train_loss", 1.0), n_boot=200, lr_range=(0.05, 1.7))


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_every_figure_is_written_as_png_and_svg(report):
    # write_report drives every function of analysis.plots; each returns [png, svg]
    names = sorted({p.stem for p in report.figures})
    assert names == sorted(
        ["steps_fit", "speedup", "loss_contours", "loss_curves", "best_lr", "final_metric"]
    )
    assert len(report.figures) == 12
    for p in report.figures:
        if p.suffix == ".png":
            assert _is_png(p), p
        else:
            text = p.read_text()
            assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 5000


def test_final_metric_table_is_table_2(sweep, tmp_path):
    paths, table = plots.final_metric(sweep, tmp_path)
    assert [p.suffix for p in paths] == [".png", ".svg"] and _is_png(paths[0])
    # one row per (strategy, batch size); tuned has 2 seeds, accuracy falls with B by design
    assert len(table) == 2 * len(SIZES)
    tuned = table[table["strategy"] == "tuned"]
    assert set(tuned["n_seeds"]) == {2} and tuned["mean"].is_monotonic_decreasing


def test_contours_need_two_batch_sizes(sweep, tmp_path):
    with pytest.raises(AnalysisError, match="2 or more batch sizes"):
        plots.loss_contours(sweep[sweep["batch_size"] == 8], tmp_path)


def test_report_embeds_every_figure_and_the_headline(report):
    text = report.html.read_text()
    pngs = [p for p in report.figures if p.suffix == ".png"]
    assert len(pngs) == 6  # steps fit, speedup, contours, curves, best LR, final accuracy
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert sorted(embedded) == sorted(base64.b64encode(p.read_bytes()).decode() for p in pngs)
    assert "<img" in text and 'src="figures/' not in text  # self-contained: no file links
    c = report.cbs
    assert f"B_crit = {c.b_crit:.3g}" in text and f"CBS = {c.cbs:.3g}" in text
    lo, hi = c.b_crit_ci
    assert f"95% CI {lo:.3g}-{hi:.3g}" in text
    for words in (
        "train_loss &lt;= 1",
        "fixed goal",
        "log S = log(S_min + E_min / B)",
        "smoothing",
    ):
        assert words in text, words


def test_report_headline_recovers_the_truth(report):
    # 5% noise, 2 seeds: B_crit within 25% of the truth and inside its interval
    c = report.cbs
    assert report.strategy == "tuned"
    assert c.b_crit == pytest.approx(B_CRIT, rel=0.25)
    assert c.fit.s_min == pytest.approx(S_MIN, rel=0.15)
    assert c.b_crit_ci[0] < c.b_crit < c.b_crit_ci[1]
    assert c.cbs == pytest.approx(1.2 * 8 + 0.2 * c.b_crit)


def test_summary_files(report):
    d = json.loads(report.summary_json.read_text())
    for key in ("b_crit", "b_crit_ci", "s_min", "e_min", "cbs", "cbs_ci", "cbs_overhead",
                "cbs_reference_batch_size", "cbs_definition", "assumptions", "target"):  # fmt: skip
        assert key in d, key
    assert d["b_crit"] == pytest.approx(report.cbs.b_crit)
    assert set(d["fits_per_strategy"]) == {"tuned", "lsr"}
    assert d["target"] == {"metric": "train_loss", "value": 1.0, "direction": "min",
                           "rule": "fixed goal", "ema": None}  # fmt: skip
    csv = pd.read_csv(report.summary_csv)
    assert len(csv) == 2 * len(SIZES)
    for col in (
        "strategy",
        "batch_size",
        "steps",
        "lr",
        "speedup",
        "ideal",
        "efficiency",
        "regime",
    ):
        assert col in csv, col
    tuned = csv[csv["strategy"] == "tuned"].set_index("batch_size")
    assert tuned.loc[8, "regime"] == "linear" and tuned.loc[2048, "regime"] == "stagnation"
    # best LR of 2048 (0.1 * sqrt(256) = 1.6) is within 5% of log(1.7/0.05) of the 1.7 edge
    assert bool(tuned.loc[2048, "lr_at_search_edge"]) and not bool(
        tuned.loc[8, "lr_at_search_edge"]
    )


def test_report_with_paper_threshold_and_ema(sweep, tmp_path):
    result = write_report(
        sweep[sweep["strategy"] == "tuned"], tmp_path, None, ema=0.3, n_boot=0, figures=False
    )
    assert result.target.rule.startswith("paper rule") and "B=2048" in result.target.rule
    assert np.isfinite(result.cbs.b_crit) and np.isnan(result.cbs.b_crit_ci[0])
    assert "beta = 0.3" in result.html.read_text()


def test_report_refuses_too_few_batch_sizes(sweep, tmp_path):
    two = sweep[sweep["batch_size"].isin([8, 32])]
    with pytest.raises(AnalysisError, match="strategy 'tuned'.*at least 3 distinct batch sizes"):
        write_report(two, tmp_path, Target("train_loss", 1.0), n_boot=0, figures=False)
