"""What a person sees: a finished sweep in the MLflow UI, and the HTML report, in headless Chromium.

The sweep is a real engine run (`tune_jobs.sweep.run_sweep`, synthetic workload, 9 trials)
tracked on a real `mlflow server` on 127.0.0.1. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ARTIFACTS, MlflowServer
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ABSENT = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        bool(ABSENT),
        reason=f"{' and '.join(ABSENT)} not installed: `apt-get install chromium chromium-driver`",
    ),
]
UI_TIMEOUT = 240  # s; the MLflow UI is a large React app and CI machines have 2 shared cores
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1200",
)  # fmt: skip


@dataclass
class Sweep:
    server: MlflowServer
    experiment_id: str
    parent: Run
    trials: list[Run]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Iterator[Sweep]:
    """A tiny real sweep (engine, synthetic workload) tracked on a real `mlflow server`; the
    engine starts Ray itself (with retries) unless a test already did."""
    from tune_jobs.job_file import parse_job
    from tune_jobs.sweep import run_sweep

    root = tmp_path_factory.mktemp("browser-sweep")
    with pytest.MonkeyPatch.context() as mp:  # no GenAI job runner: 8 processes fewer to start
        mp.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        server = MlflowServer(root).start(timeout=300)
    try:
        job = parse_job(
            {
                "name": "browser-sweep", "workload": "synthetic", "batch_sizes": [8, 32, 128],
                "lr_search": {"min": 0.001, "max": 2.0, "trials_per_batch_size": 3, "confirm_seeds": 0, "seed": 0},
                "target": {"metric": "eval_loss", "value": 0.2, "direction": "min"},
                "budget": {"max_steps": 300}, "eval_every": 10, "storage": str(root / "runs"),
                "tracking": {"uri": server.uri, "experiment": "browser-sweep"},
            }
        )  # fmt: skip
        result = run_sweep(job, num_cpus=2, progress=False)
        client = MlflowClient(server.uri)
        parent = client.get_run(result.parent_run_id)
        trials = client.search_runs(
            [result.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        yield Sweep(server, result.experiment_id, parent, trials)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="critbatch-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    driver.save_screenshot(str(path))
    return path


def _wait_for(driver, what: str, ok: Callable[[], bool], name: str) -> None:
    """Poll ``ok`` until it holds; on timeout save a screenshot and fail saying what was missing."""
    deadline = time.time() + UI_TIMEOUT
    while time.time() < deadline:
        try:
            if ok():
                return
        except Exception:  # the React app re-renders under us: stale elements, half-built DOM
            pass
        time.sleep(1.0)
    shot = _shot(driver, f"{name}-timeout")
    pytest.fail(f"the page never showed {what} within {UI_TIMEOUT} s (screenshot: {shot})")


def _text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.slow
def test_mlflow_ui_shows_the_sweep_and_its_trials(finished_sweep, browser):
    s = finished_sweep
    parent_name = s.parent.info.run_name
    child_names = [r.info.run_name for r in s.trials]
    assert len(s.trials) == 9 and parent_name == "browser-sweep"

    browser.get(f"{s.server.uri}/#/experiments/{s.experiment_id}/runs")
    _wait_for(
        browser, f"the parent run {parent_name!r}", lambda: parent_name in _text(browser), "runs"
    )
    _expand_parent_row(browser, s.parent.info.run_id)
    child_rows = [f'div[role="row"][row-id="{r.info.run_id}"]' for r in s.trials]
    _wait_for(
        browser,
        f"the child runs {child_names} under the parent",
        lambda: (
            all(browser.find_elements(By.CSS_SELECTOR, c) for c in child_rows)
            and all(n in _text(browser) for n in child_names)
        ),
        "runs-expanded",
    )
    _shot(browser, "experiment-runs")

    reached = [r for r in s.trials if "steps_to_target" in r.data.metrics]
    assert reached, "the tiny sweep reached its target in no trial: the UI check needs one"
    run = reached[0]
    browser.get(f"{s.server.uri}/#/experiments/{s.experiment_id}/runs/{run.info.run_id}")
    expected = [
        ("Parameters", "batch_size", run.data.params["batch_size"]),
        ("Parameters", "lr", run.data.params["lr"]),
        ("Metrics", "steps_to_target", _ui_number(run.data.metrics["steps_to_target"])),
    ]
    for section, key, value in expected:
        _wait_for(
            browser,
            f"{section}: {key} = {value} on the run page of {run.info.run_name}",
            lambda s=section, k=key, v=value: _table_shows(browser, s, k, v),
            f"run-{key}",
        )
    _shot(browser, "trial-run")


def _expand_parent_row(driver, parent_id: str) -> None:
    """Child runs are folded under their parent in the runs table (ag-grid): click its [+]."""
    button = (
        f'div[role="row"][row-id="{parent_id}"] button[data-component-id*="runnamecellrenderer"]'
    )
    _wait_for(
        driver,
        "the parent row's expand button",
        lambda: driver.find_elements(By.CSS_SELECTOR, button),
        "runs-expand",
    )
    driver.find_elements(By.CSS_SELECTOR, button)[0].click()


def _table_shows(driver, section: str, key: str, value: str) -> bool:
    """The run page's ``section`` table ("Metrics (6)", "Parameters (12)") has a row key | value."""
    rows = driver.find_elements(
        By.XPATH,
        f"//h4[starts-with(normalize-space(.), '{section} (')]"
        "/ancestor::div[.//div[@role='row']][1]//div[@role='row']",
    )
    cells = (
        [c.text.strip() for c in r.find_elements(By.CSS_SELECTOR, "[role=cell]")] for r in rows
    )
    return [key, value] in cells


def _ui_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ---------------------------------------------------------------- the HTML report
def _report_html_for_test(finished_sweep: Sweep, out_dir: Path) -> Path:
    """The report of the browser sweep, written by the real report writer from load()."""
    from analysis.loaders import load
    from analysis.report import write_report
    from analysis.steps import Target

    df = load(finished_sweep.parent.info.run_id, finished_sweep.server.uri)
    # A goal every batch size reached (5% above the worst batch size's best eval loss), so the
    # fit and all its figures are drawn whatever the 9 random LRs turned out to be.
    worst_best = float(df.groupby("batch_size")["eval_loss"].min().max())
    target = Target(metric="eval_loss", value=worst_best * 1.05, direction="min")
    return write_report(df, out_dir, target, n_boot=50).html


def test_report_images_all_load(finished_sweep, browser, tmp_path):
    html = _report_html_for_test(finished_sweep, tmp_path / "report")
    browser.get(html.as_uri())
    _wait_for(browser, "a complete page", lambda: browser.execute_script(
        "return document.readyState") == "complete", "report")  # fmt: skip
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    _shot(browser, "report")
    assert len(images) >= 3, f"expected the report's figures, found {images}"
    broken = [alt for alt, complete, width in images if not complete or width <= 0]
    assert not broken, f"images that did not load: {broken}"
