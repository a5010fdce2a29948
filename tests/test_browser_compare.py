"""Sweeps compared in the MLflow UI, in real headless Chromium against a real `mlflow server`
on 127.0.0.1 after two real sweeps (tuned and BLR of the synthetic workload, one experiment):
the link critbatch prints lands on the runs table, each sweep's b_crit is a column of it, and
two sweeps are selected and compared. The runs-table screenshot is docs/mlflow_sweeps.png.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, MlflowServer
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By
from test_browser import ABSENT, _shot, _text, _wait_for, browser  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # two sweeps and the MLflow UI on 2 shared cores: a few minutes
    pytest.mark.skipif(bool(ABSENT), reason=f"{' and '.join(ABSENT)} not installed: "
                       "`apt-get install chromium chromium-driver`"),
]  # fmt: skip
SCREENSHOT = REPO / "docs" / "mlflow_sweeps.png"


@dataclass
class TwoSweeps:
    server: MlflowServer
    experiment_id: str
    parents: dict[str, str]  # sweep name -> parent run id


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory) -> Iterator[TwoSweeps]:
    from tune_jobs.job_file import parse_job
    from tune_jobs.sweep import run_sweep

    root = tmp_path_factory.mktemp("browser-compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        server = MlflowServer(root).start(timeout=300)

    def job(name: str, **over):
        d = {
            "name": name, "workload": "synthetic", "batch_sizes": [4, 16, 64, 256],
            "lr_search": {"min": 0.003, "max": 1.0, "trials_per_batch_size": 2, "confirm_seeds": 0, "seed": 0},
            "target": {"metric": "eval_loss", "value": 0.27, "direction": "min"},
            "budget": {"max_steps": 400}, "eval_every": 2, "storage": str(root / "runs"),
            "tracking": {"uri": server.uri, "experiment": "synthetic-strategies"},
        }  # fmt: skip
        return parse_job({**d, **over})

    try:
        parents = {}
        for j in (job("synthetic-tuned"),
                  job("synthetic-blr", strategy={"name": "blr", "base_batch_size": 4,
                                                 "base_lr": 0.05})):  # fmt: skip
            result = run_sweep(j, num_cpus=2, progress=False)
            parents[j.name] = result.parent_run_id
        yield TwoSweeps(server, result.experiment_id, parents)
    finally:
        server.stop()


def test_sweeps_land_on_runs_show_b_crit_and_compare(two_sweeps, browser):  # noqa: F811
    from tune_jobs.mlflow_view import runs_url

    s = two_sweeps
    client = MlflowClient(s.server.uri)
    b_crit = {n: client.get_run(r).data.metrics["b_crit"] for n, r in s.parents.items()}
    browser.get(runs_url(s.server.uri, s.experiment_id))  # the link `critbatch run` prints
    rows = {n: f'div[role="row"][row-id="{r}"]' for n, r in s.parents.items()}
    _wait_for(browser, "both sweeps as rows of the runs table",
              lambda: all(browser.find_elements(By.CSS_SELECTOR, c) for c in rows.values()),
              "compare-runs")  # fmt: skip
    assert "/runs" in browser.current_url and "Traces" not in _header(browser)
    _wait_for(browser, "a b_crit column", lambda: "b_crit" in _headers(browser), "b_crit-col")

    def shows_b_crit(name: str) -> bool:  # the UI prints as many digits as fit the cell
        cell = browser.find_element(By.CSS_SELECTOR, f'{rows[name]} [col-id="metrics.`b_crit`"]')
        return cell.text.strip()[:4] == f"{b_crit[name]:.10f}"[:4]

    _wait_for(browser, f"each sweep's b_crit {b_crit} in its row",
              lambda: all(shows_b_crit(n) for n in rows), "b_crit-values")  # fmt: skip
    for button in browser.find_elements(By.CSS_SELECTOR, "button[aria-label*='lose']"):
        if button.is_displayed() and button.location["x"] > 1100:  # the assistant side panel
            button.click()
    path = _shot(browser, "compare-runs-table")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, SCREENSHOT)

    for css in rows.values():
        browser.find_element(By.CSS_SELECTOR, f"{css} input[type=checkbox]").click()
    compare = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Compare"]
    assert compare, "no Compare button after selecting two sweeps"
    compare[0].click()
    _wait_for(browser, "the compare page of both sweeps with their b_crit",
              lambda: "Comparing 2 Runs" in _text(browser)
              and all(n in _text(browser) for n in rows) and "b_crit" in _text(browser),
              "compare-page")  # fmt: skip
    assert all(r in browser.current_url for r in s.parents.values())
    _shot(browser, "compare-page")


def _headers(driver) -> list[str]:
    return [h.text for h in driver.find_elements(By.CSS_SELECTOR, "[role=columnheader]")]


def _header(driver) -> str:
    """The page's title line (``Runs`` on the runs table, ``Traces`` on the GenAI overview)."""
    titles = driver.find_elements(By.TAG_NAME, "h2") + driver.find_elements(By.TAG_NAME, "h1")
    return " ".join(t.text for t in titles)


def test_screenshot_is_in_docs():
    assert Path(SCREENSHOT).exists() and SCREENSHOT.stat().st_size > 20_000
