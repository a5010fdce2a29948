"""Training with a batch-size schedule (issue 17): the supervised loop switches batch size as the
examples seen pass each threshold, scales the LR by the rule, counts the true examples, and
resumes exactly from a checkpoint taken mid-schedule; bad schedules are refused by name."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from trainables.api import InputError, Target, TrialConfig
from trainables.branching import batch_size_at, check_batch_size_schedule, scaled_lr
from trainables.registry import run_trial
from tune_jobs.config import JobError
from tune_jobs.job_file import parse_job

JOBS = Path(__file__).resolve().parents[1] / "tune_jobs" / "jobs"
SCHEDULE = ((0, 8), (100, 16), (300, 32))


def scheduled(**kw) -> TrialConfig:
    return TrialConfig("synthetic", 8, 0.05, seed=1, max_steps=10_000, eval_every=1,
                       batch_size_schedule=SCHEDULE, max_examples=600,
                       target=Target("eval_loss", 1e-9, "min"), **kw)  # fmt: skip


def run(config: TrialConfig, state=None) -> tuple[list[dict], dict[int, dict]]:
    reports, checkpoints = [], {}

    def keep(m, c=None):
        reports.append(m)
        if c is not None:
            checkpoints[m["step"]] = c

    run_trial(config, keep, state)
    return reports, checkpoints


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_switch_points_examples_and_lr_per_phase(rule):
    reports, _ = run(scheduled(lr_rule=rule))
    sizes = [r["batch_size"] for r in reports]
    # 8 until 100 examples are seen (13 steps: 104), 16 until 300 (13 more: 312), then 32
    assert sizes == [8] * 13 + [16] * 13 + [32] * 9
    examples = [r["examples"] for r in reports]
    assert examples == [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert examples[12] == 104 and examples[25] == 312 and examples[-1] == 600
    assert [r["step"] for r in reports] == list(range(1, 36))  # steps keep counting
    assert reports[-1]["epoch"] == pytest.approx(600 / 4096)
    for r in reports:
        k = r["batch_size"] / 8
        assert r["lr"] == pytest.approx(0.05 * (k if rule == "linear" else math.sqrt(k)))
    assert reports[-1]["status"] == "not_reached"  # the example budget ended it


def test_a_checkpoint_mid_schedule_resumes_to_the_same_curve():
    whole, checkpoints = run(scheduled(checkpoint_every=5))
    assert 20 in checkpoints and checkpoints[20]["examples"] == 8 * 13 + 16 * 7
    rest, _ = run(scheduled(), checkpoints[20])  # mid-phase 2: batch 16
    tail = [r for r in whole if r["step"] > 20]
    keys = ("step", "examples", "batch_size", "lr", "train_loss", "eval_loss")
    assert [{k: r[k] for k in keys} for r in rest] == [{k: r[k] for k in keys} for r in tail]


def test_examples_to_target_and_the_step_budget():
    reports, _ = run(dataclasses.replace(scheduled(), max_examples=0, max_steps=40))
    assert reports[-1]["step"] == 40 and reports[-1]["examples"] == 104 + 208 + 32 * 14
    cfg = dataclasses.replace(scheduled(), max_examples=0, max_steps=2000,
                              target=dataclasses.replace(scheduled().target, value=0.3))  # fmt: skip
    reports, _ = run(cfg)
    last = reports[-1]
    assert last["status"] == "reached"
    at = next(r for r in reports if r["step"] == last["steps_to_target"])
    assert last["examples_to_target"] == at["examples"]


def test_without_a_schedule_nothing_changes():
    reports, _ = run(TrialConfig("synthetic", 8, 0.05, seed=1, max_steps=20, eval_every=5))
    assert [r["examples"] for r in reports] == [40, 80, 120, 160]
    assert all("batch_size" not in r for r in reports)


def test_schedule_helpers():
    s = check_batch_size_schedule([[0, 32], [20000, 64], [60000, 128]])
    assert s == ((0, 32), (20000, 64), (60000, 128))
    assert [batch_size_at(s, e) for e in (0, 19999, 20000, 59999, 10**9)] == [32, 32, 64, 64, 128]
    assert scaled_lr(0.1, 4, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 4, "sqrt") == pytest.approx(0.2)


@pytest.mark.parametrize(
    "schedule,words",
    [
        ([], "batch_size_schedule: []; give a non-empty list of [examples, batch_size] pairs"),
        ([[10, 32]], "batch_size_schedule[0]: starts at 10 examples; the first pair starts at 0"),
        ([[0, 32], [100, 64], [50, 128]], "batch_size_schedule[2]: 50 examples after 100"),
        ([[0, 32], [100, 64], [100, 128]], "batch_size_schedule[2]: 100 examples after 100"),
        ([[0, 0]], "batch_size_schedule[0]: batch size 0; give a positive integer"),
        ([[0, 32], [100]], "batch_size_schedule[1]: [100]; each entry is a pair of integers"),
        ([[0, 32.5]], "batch_size_schedule[0]: [0, 32.5]; each entry is a pair of integers"),
        ("0:32", "batch_size_schedule: '0:32'; give a non-empty list"),
    ],
)
def test_bad_schedules_name_the_entry_and_the_fix(schedule, words):
    with pytest.raises(InputError) as e:
        check_batch_size_schedule(schedule)
    assert words in str(e.value)


def quickstart(**extra) -> dict:
    d = yaml.safe_load((JOBS / "quickstart.yaml").read_text())
    d.pop("batch_sizes")
    return d | extra


def test_the_job_field():
    job = parse_job(quickstart(batch_size_schedule=[[0, 32], [2000, 64], [6000, 128]]))
    assert job.batch_sizes == [32, 64, 128]  # filled in from the schedule
    with pytest.raises(JobError, match=r"batch_size_schedule\[1\]: 0 examples after 0"):
        parse_job(quickstart(batch_size_schedule=[[0, 32], [0, 64]]))
    with pytest.raises(JobError, match=r"batch_size_schedule\[0\]: expected a list of integers"):
        parse_job(quickstart(batch_size_schedule=[32]))
    with pytest.raises(
        JobError, match=r"batch_size_schedule: expected a list of lists of integers"
    ):
        parse_job(quickstart(batch_size_schedule=32))
    nqm = yaml.safe_load((JOBS / "nqm_branch.yaml").read_text()) | {
        "batch_size_schedule": [[0, 8], [800, 16]]
    }
    with pytest.raises(JobError, match="batch_size_schedule: nqm_exact trains with its own loop"):
        parse_job(nqm)
    with pytest.raises(InputError, match="batch_size_schedule: nqm_sgd trains with its own loop"):
        run_trial(TrialConfig("nqm_sgd", 8, 0.01, batch_size_schedule=((0, 8),)), print)


def test_dataset_batches_switch_size_like_tensor_batches():
    """Both batch paths draw the same examples across a batch-size switch (one index stream)."""
    import torch

    from trainables.batches import DatasetBatches, TensorBatches

    x = torch.arange(50).float().unsqueeze(1)
    t = TensorBatches((x,), 4, seed=5)
    d = DatasetBatches(torch.utils.data.TensorDataset(x), 4, 5, torch.device("cpu"), 0)
    got_t, got_d = [], []
    for i in range(30):
        if i == 7:
            t.set_batch_size(9)
            d.set_batch_size(9)
        got_t.append(next(t)[0].flatten().tolist())
        got_d.append(next(d)[0].flatten().tolist())
    assert got_t == got_d and [len(b) for b in got_t] == [4] * 7 + [9] * 23
