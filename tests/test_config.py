"""Job files: every bad field gets an error naming it and the fix; every shipped job parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tune_jobs.cli import main
from tune_jobs.config import JobError
from tune_jobs.config_build import field_docs
from tune_jobs.job_file import load_job, parse_job

REPO_JOBS = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs"
JOBS = sorted(REPO_JOBS.glob("*.yaml"))

GOOD = {
    "name": "t",
    "workload": "digits_mlp",
    "batch_sizes": [8, 16],
    "target": {"metric": "eval_accuracy", "value": 0.9, "direction": "max"},
}


def with_(**changes):
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    for k, v in changes.items():
        node = d
        *parents, last = k.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return d


@pytest.mark.parametrize(
    "job, field, fix",
    [
        (with_(batch_szes=[8]), "batch_szes", "did you mean `batch_sizes`"),
        (with_(lr_search__mn=0.1), "lr_search.mn", "did you mean `lr_search.min`"),
        (with_(batch_sizes=[]), "batch_sizes", "at least one positive batch size"),
        (with_(batch_sizes=[8, 0]), "batch_sizes[1]", "not positive"),
        (with_(batch_sizes=[8, -4]), "batch_sizes[1]", "not positive"),
        (with_(batch_sizes=[8, 8]), "batch_sizes", "duplicates"),
        (with_(batch_sizes="8,16"), "batch_sizes", "write e.g. [8, 16, 32]"),
        (with_(batch_sizes=[8, "x"]), "batch_sizes[1]", "expected an integer"),
        (with_(batch_sizes=[8, 16.5]), "batch_sizes[1]", "expected an integer"),
        (with_(lr_search__min=1.0, lr_search__max=0.1), "lr_search", "swap them"),
        (with_(lr_search__min=-1.0), "lr_search", "positive finite"),
        (with_(lr_search__trials_per_batch_size=0), "lr_search.trials_per_batch_size", ">= 1"),
        (with_(lr_search__algorithm="bayes"), "lr_search.algorithm", "line_search, random or grid"),
        (
            with_(lr_search__algorithm="tpe"),
            "lr_search.algorithm",
            "'tpe' was renamed 'line_search' (the project's bracketing line search); "
            "write algorithm: line_search",
        ),
        (with_(lr_search__log="yes"), "lr_search.log", "true or false"),
        (with_(workload="digits"), "workload", "did you mean 'digits_mlp'"),
        (with_(workload="resnet9000"), "workload", "critbatch workloads"),
        (with_(target__metric="eval_bleu"), "target.metric", "it reports: train_loss"),
        (with_(target__direction="up"), "target.direction", "use min"),
        (with_(target__direction="min"), "target.direction", "set direction: max"),
        (with_(budget={"max_steps": 100, "epochs": 3}), "budget", "exactly one"),
        (with_(budget={}), "budget", "exactly one"),
        (with_(eval_every=0), "eval_every", ">= 1"),
        (with_(strategy__name="cosine"), "strategy.name", "tuned, blr, lsr or srsr"),
        (with_(strategy__name="lsr"), "strategy", "base_lr > 0"),
        (with_(resources__gpus=-1), "resources.gpus", "number >= 0"),
        (with_(resources__gpus=1.5), "resources.gpus", "whole number"),
        (with_(resources__cpus=0), "resources.cpus", "must be > 0"),
        (with_(resources__gpus_from_batch_size=[1]), "resources.gpus_from_batch_size", "a mapping"),
        (
            with_(resources__gpus_from_batch_size={"big": 1}),
            "resources.gpus_from_batch_size",
            "e.g. {8192: 1}",
        ),
        (
            with_(resources__gpus_from_batch_size={8192: 1.5}),
            "resources.gpus_from_batch_size.8192",
            "whole number",
        ),
        (
            with_(resources__gpus_from_batch_size={8192: "one"}),
            "resources.gpus_from_batch_size.8192",
            "number >= 0",
        ),
        (with_(data__fraction=1.5), "data.fraction", "(0, 1]"),
        (with_(tracking__uri="./mlruns"), "tracking.uri", "sqlite:///mlflow.db"),
        (with_(name="a b"), "name", "names a folder"),
        (with_(early_stopping__reduction_factor=1), "early_stopping.reduction_factor", "> 1"),
        (with_(seeds=[]), "seeds", "non-empty"),
        (with_(log_noise_scale="yes"), "log_noise_scale", "expected true or false"),
        (with_(log_noise_scale=1), "log_noise_scale", "expected true or false"),
        (
            with_(log_noise_scale=True, workload="nqm_exact", target={"metric": "eval_loss"}),
            "log_noise_scale",
            "use nqm_sgd",
        ),
        (
            with_(
                log_noise_scale=True,
                workload="wikitext2_lstm",
                target={"metric": "eval_loss", "value": 5.0},
            ),
            "log_noise_scale",
            "hidden state",
        ),
        (with_(noise_scale=True), "noise_scale", "did you mean `log_noise_scale`"),
        (
            {k: v for k, v in GOOD.items() if k != "workload"},
            "workload",
            "required field is missing",
        ),
        ([1, 2], "job", "YAML mapping"),
    ],
)
def test_bad_field_names_field_and_fix(job, field, fix):
    with pytest.raises(JobError) as e:
        parse_job(job)
    msg = str(e.value)
    assert msg.startswith(field), msg
    assert fix in msg, msg


def test_a_stored_sweep_from_before_the_rename_still_parses():
    """resume and sync read the job from sweep.json, written when `tpe` was the name: it reads
    as line_search there, while a job file with it is refused (test above)."""
    from tune_jobs.job_file import parse_stored_job

    old = with_(lr_search__algorithm="tpe")
    assert parse_stored_job(old).lr_search.algorithm == "line_search"
    assert old["lr_search"]["algorithm"] == "tpe"  # the stored mapping is left as it was
    with pytest.raises(JobError, match="lr_search.algorithm: 'tpe' was renamed"):
        parse_job(old)
    with pytest.raises(JobError, match="lr_search.algorithm: unknown 'bo'"):
        parse_stored_job(with_(lr_search__algorithm="bo"))


def test_plan_names_the_lr_search_algorithm():
    """The plan `run` and `check` print names the algorithm as the job file spells it."""
    from tune_jobs.cli.run import plan_text

    job = parse_job(GOOD)
    assert job.lr_search.algorithm == "line_search"  # the default
    assert "8 trials per batch size (line_search)" in plan_text(job)
    grid = parse_job(with_(lr_search__algorithm="grid"))
    assert "8 trials per batch size (grid)" in plan_text(grid)


def test_gpus_from_batch_size_gives_large_batches_more_gpu():
    job = parse_job(
        with_(batch_sizes=[64, 256, 512, 1024],
              resources={"gpus": 0.25, "gpus_from_batch_size": {256: 0.5, 512: 1}})
    )  # fmt: skip
    assert [job.resources.gpus_for(b) for b in job.batch_sizes] == [0.25, 0.5, 1, 1]
    assert parse_job(GOOD).resources.gpus_for(16) == 0.0  # no mapping: `gpus` everywhere
    from tune_jobs.cli.run import plan_text
    from tune_jobs.placement import trial_resources  # what Tune is given, per trial config

    assert [trial_resources(job.resources, {"batch_size": b}).bundles for b in (64, 512)] == [
        [{"CPU": 1.0, "GPU": 0.25}], [{"CPU": 1.0, "GPU": 1.0}]]  # fmt: skip
    assert trial_resources(job.resources, {}).bundles == [{"CPU": 1.0, "GPU": 1.0}]  # largest
    # (`critbatch check` of this job passes only on a machine with a GPU: its preflight)
    assert "0.25 GPU (B >= 256: 0.5, B >= 512: 1)" in plan_text(job)


def test_good_job_defaults_and_plan_size():
    job = parse_job(GOOD)
    assert job.experiment == "t" and job.tuned
    assert job.search_trials == 2 * 1 * job.lr_search.trials_per_batch_size
    # plus the confirmation runs: 4 fresh seeds at each study's chosen LR and the LR below it
    assert job.confirm_lr_factors == (1.0, 1 / 1.5)
    assert (
        job.total_trials == job.search_trials + 2 * 1 * 4 * 2 and job.lr_search.confirm_seeds == 4
    )
    assert job.target.smoothing == 0.8  # the stop rule's EMA beta
    assert job.budget.max_steps == 1000


def test_epoch_budget_converts_to_steps_per_batch_size():
    job = parse_job(with_(budget={"epochs": 2}))
    assert job.max_steps_for(8, 1438) == 360  # ceil(2 * 1438 / 8)
    assert job.max_steps_for(16, 1438) == 180


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(bad)


def test_overrides_use_dotted_fields(tmp_path):
    p = tmp_path / "j.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    job = load_job(p, {"lr_search.trials_per_batch_size": 3, "budget.max_steps": 50})
    assert job.lr_search.trials_per_batch_size == 3 and job.budget.max_steps == 50


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_shipped_job_is_valid(path):
    """Every shipped job file validates and plans. (`critbatch check` also runs the machine's
    preflight, so the GPU and on-disk-data jobs pass it only where they can run.)"""
    from tune_jobs.cli.run import plan_text

    assert plan_text(load_job(path)).startswith("sweep ")


def test_quickstart_passes_check_here(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(REPO_JOBS / "quickstart.yaml")]) == 0
    assert "ok: the job is valid" in capsys.readouterr().out


def test_quickstart_command_finds_its_shipped_job():
    """`critbatch quickstart` (the README's first command) runs the job it ships."""
    from tune_jobs.cli.run import JOBS_DIR

    assert (JOBS_DIR / "quickstart.yaml").resolve() == (REPO_JOBS / "quickstart.yaml").resolve()


def test_every_paper_workload_has_blr_lsr_srsr_and_tuned_jobs():
    """Table 1's workloads, each with the three strategies the paper compares and critbatch's
    tuned search. (svhn_extra_resnet34 is the SVHN row on 604,388 images, only for the paper's
    data-fraction figure, which uses BLR.)"""
    strategies: dict[str, set[str]] = {}
    for path in JOBS:
        if path.name.startswith("paper_"):
            job = load_job(path)
            strategies.setdefault(job.workload, set()).add(job.strategy.name)
    table_1 = {f"cifar10_{m}" for m in ("resnet34", "vgg16", "alexnet", "mobilenetv2")} | {
        f"{d}_resnet34" for d in ("cifar100", "svhn", "mnist")
    } | {"wikitext2_lstm", "cityscapes_drn"}  # fmt: skip
    assert table_1 <= set(strategies)
    for workload in table_1:
        assert strategies[workload] == {"blr", "lsr", "srsr", "tuned"}, workload


def test_check_cli_bad_job_exits_2_and_names_field(tmp_path, capsys):
    p = tmp_path / "j.yaml"
    p.write_text(yaml.safe_dump(with_(batch_sizes=[])))
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "batch_sizes: the list is empty" in err
    assert not (tmp_path / "critbatch_runs").exists()


def test_every_field_is_documented():
    docs = field_docs()
    undocumented = [name for name, _, doc in docs if not doc]
    assert not undocumented, undocumented
    assert any(name == "lr_search.trials_per_batch_size" for name, _, _ in docs)


def test_log_noise_scale_reaches_the_trial_config_and_the_plan(tmp_path, capsys):
    """Off by default; when on, the base TrialConfig the driver hands every worker (sweep.py
    passes `trial_config(...)` as a dict to tune_jobs.trainable) has noise_scale set, and
    `critbatch check` says so."""
    from trainables.api import TrialConfig

    assert not parse_job(GOOD).trial_config(8, 0.1, 0, 1438).noise_scale
    for workload, target in (("digits_mlp", GOOD["target"]), ("nqm_sgd", {"metric": "eval_loss"})):
        job = parse_job(with_(log_noise_scale=True, workload=workload, target=target))
        cfg = job.trial_config(8, 0.1, 0, 1438)
        assert cfg.noise_scale is True
        assert TrialConfig.from_dict(cfg.to_dict()).noise_scale is True  # survives the dict
    p = tmp_path / "j.yaml"
    p.write_text(yaml.safe_dump(with_(log_noise_scale=True)))
    assert main(["check", str(p)]) == 0
    assert "B_simple logged" in capsys.readouterr().out
    assert main(["check", str(p), "--set", "log_noise_scale=false"]) == 0
    assert "B_simple" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "job, field, fix",
    [
        (with_(lr_search__convergence_tolerance=0), "lr_search.convergence_tolerance", "(0, 1)"),
        (with_(lr_search__convergence_tolerance=1.5), "lr_search.convergence_tolerance", "0.01"),
        (with_(lr_search__lag_stop=1.0), "lr_search.lag_stop", "[0, 1)"),
        (with_(lr_search__lag_stop=-0.1), "lr_search.lag_stop", "0 turns it off"),
        (with_(lr_search__cascade="yes"), "lr_search.cascade", "true or false"),
        (with_(lr_search__pipeline=-1), "lr_search.pipeline", "integer >= 0"),
        (with_(lr_search__pipeline=2, lr_search__cascade=True), "lr_search.pipeline", "choose one"),
        (with_(lr_search__stop_when_converged=1), "lr_search.stop_when_converged", "true or false"),
    ],
)
def test_search_stop_fields_rejected_with_the_field_named(job, field, fix):
    with pytest.raises(JobError) as e:
        parse_job(job)
    assert field in str(e.value) and fix in str(e.value), str(e.value)


def test_search_stop_fields_defaults_and_docs():
    r = parse_job(GOOD).lr_search
    assert r.stop_when_converged and r.convergence_tolerance == 0.01 and r.lag_stop == 0.25
    assert r.cascade is False  # all batch sizes in flight unless a job asks for the cascade
    assert parse_job(with_(lr_search__lag_stop=0)).lr_search.lag_stop == 0
    names = {name for name, _, _ in field_docs()}
    assert {"lr_search.stop_when_converged", "lr_search.convergence_tolerance"} <= names
    assert {"lr_search.lag_stop", "lr_search.cascade"} <= names
