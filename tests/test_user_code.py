"""The user's own workload (`workload: "module:function"`): every bad-user-code case fails at
`critbatch check` with an error naming the field and the fix; options are a declared schema
for built-in and user workloads alike; a Dataset-based build trains exactly as the same data
as tensors, and resumes from a checkpoint."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from trainables.api import TrialConfig
from trainables.registry import run_trial
from tune_jobs.cli import main
from tune_jobs.config import JobError
from tune_jobs.job_file import load_job

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_model"

GOOD = """
from dataclasses import dataclass
import torch
from trainables import Task

@dataclass(frozen=True)
class Options:
    width: int = 4  # hidden units

OPTIONS = Options

def build(config, device):
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(3, config.options["width"]), torch.nn.Linear(config.options["width"], 1))
    def loss(m, batch):
        xb, yb = batch
        return {loss_expr}
    return {task}
"""
TASK = "Task(model=model, batches=(x, y), loss=loss, evaluate=lambda m: {'eval_loss': 1.0}, train_size=64)"


def _project(tmp_path: Path, module: str, workload: str = "mymodel:build", **job) -> Path:
    (tmp_path / "mymodel.py").write_text(textwrap.dedent(module))
    data = {"name": "user-code", "workload": workload, "batch_sizes": [4, 8], "budget": {"max_steps": 20},
            "target": {"metric": "eval_loss", "value": 0.1}, **job}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check(path: Path, capsys) -> tuple[int, str]:
    code = main(["check", str(path)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _good(loss_expr: str = "((m(xb) - yb) ** 2).mean()", task: str = TASK) -> str:
    return GOOD.replace("{loss_expr}", loss_expr).replace("{task}", task)


def test_good_user_code_passes_check(tmp_path, capsys):
    code, out = _check(_project(tmp_path, _good()), capsys)
    assert code == 0, out
    assert "user code: built, one batch of 2" in out and "ok: the job is valid" in out


@pytest.mark.parametrize(
    ("module", "workload", "expected"),
    [
        ("import torch\nraise RuntimeError('no GPU here')\n", "mymodel:build",
         ["module 'mymodel' failed to import", "RuntimeError: no GPU here", "mymodel.py:2"]),
        ("import torch\n", "nomodule:build", ["no module 'nomodule'", "job file's folder"]),
        ("def make(config, device):\n    pass\n", "mymodel:build",
         ["has no 'build'", "def build(config, device)", "make"]),
        ("def build(config):\n    pass\n", "mymodel:build",
         ["takes (config)", "(config, device)", "(config, report, state)"]),
        ("x = 1\n", "mymodel:x", ["not a function"]),
        ("import torch\n", "mymodel", ["unknown workload"]),
    ],
)  # fmt: skip
def test_bad_module_or_callable(tmp_path, capsys, module, workload, expected):
    code, out = _check(_project(tmp_path, module, workload), capsys)
    assert code == 2, out
    for text in expected:
        assert text in out, (text, out)


@pytest.mark.parametrize(
    ("loss_expr", "task", "expected"),
    [
        ("(m(xb) - yb) ** 2", TASK, ["returned (2, 1), not a scalar tensor", ".mean()"]),
        ("((m(xb) - yb) ** 2).mean()", "dict(model=model, loss=loss)",
         ["returned dict, without batches, evaluate, train_size", "return Task(model=..."]),
        ("((m(xb) - yb) ** 2).mean()", TASK.replace("train_size=64", "train_size=None"),
         ["`train_size` is None"]),
        ("torch.tensor(1.0)", TASK, ["does not depend on the model's parameters"]),
    ],
)  # fmt: skip
def test_bad_task_or_loss(tmp_path, capsys, loss_expr, task, expected):
    code, out = _check(_project(tmp_path, _good(loss_expr, task)), capsys)
    assert code == 2, out
    for text in expected:
        assert text in out, (text, out)


def test_unknown_option_of_a_builtin_workload(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"name": "o", "workload": "synthetic", "batch_sizes": [8],
                                    "target": {"metric": "eval_loss", "value": 0.2},
                                    "options": {"dimm": 8}}))  # fmt: skip
    with pytest.raises(JobError, match=r"options.dimm: unknown option of workload synthetic; "
                       r"did you mean `dim`\? valid options: dim, n_train, noise"):  # fmt: skip
        load_job(path)
    with pytest.raises(JobError, match=r"options.dim: expected an integer, got '16'"):
        load_job(path, {"options": {"dim": "16"}})


def test_unknown_option_of_a_user_workload(tmp_path):
    path = _project(tmp_path, _good(), options={"widht": 8})
    with pytest.raises(JobError, match=r"options.widht: unknown option of workload mymodel:build; "
                       r"did you mean `width`\? valid options: width"):  # fmt: skip
        load_job(path)
    assert load_job(path, {"options": {"width": 8}}).options == {"width": 8}


def test_options_arrive_filled_in(tmp_path):
    job = load_job(_project(tmp_path, _good()))
    out: list[dict] = []
    run_trial(job.trial_config(4, 0.01, 0, None), lambda m, c=None: out.append(m))
    assert out[-1]["step"] == 20  # width (not set by the job) came from the declared default


def _spirals_trial(tmp_path: Path, as_dataset: bool, **kw) -> TrialConfig:
    return TrialConfig(workload="spirals:build", batch_size=32, lr=0.01, seed=3, max_steps=20,
                       eval_every=1, optimizer="adamw", device="cpu", code_dir=str(tmp_path),
                       options={"as_dataset": as_dataset}, **kw)  # fmt: skip


@pytest.mark.parametrize("micro_batch_size", [0, 8])
def test_dataset_gives_the_same_first_20_steps_as_tensors(tmp_path, micro_batch_size):
    shutil.copy(EXAMPLE / "spirals.py", tmp_path / "spirals.py")
    losses = {}
    for as_dataset in (False, True):
        out: list[dict] = []
        cfg = _spirals_trial(tmp_path, as_dataset, micro_batch_size=micro_batch_size)
        run_trial(cfg, lambda m, c=None, out=out: out.append(m))
        losses[as_dataset] = [m["train_loss"] for m in out]
    assert len(losses[True]) == 20
    assert losses[True] == losses[False]  # bit for bit: same examples, same order, same math


def test_dataset_with_workers_resumes_from_a_checkpoint(tmp_path):
    """Workers read ahead; the checkpoint holds the position of the batches the loop took, so a
    trial restored at step 10 goes on exactly as the uninterrupted one."""
    from trainables.loop import train_supervised
    from trainables.user_code import load_user_workload

    shutil.copy(EXAMPLE / "spirals.py", tmp_path / "spirals.py")
    workload = load_user_workload("spirals:build", str(tmp_path))
    build = workload.build

    def build_with_workers(config, device):
        task = build(config, device)
        task.data_workers = 2
        return task

    import dataclasses

    w = dataclasses.replace(workload, build=build_with_workers)
    cfg = _spirals_trial(tmp_path, True, checkpoint_every=10)
    full: list[dict] = []
    ckpts: list[dict] = []
    train_supervised(w, cfg, lambda m, c=None: (full.append(m), c and ckpts.append(c)))
    assert len(ckpts) >= 1 and ckpts[0]["step"] == 10
    rest: list[dict] = []
    train_supervised(w, cfg, lambda m, c=None: rest.append(m), ckpts[0])
    assert [m["train_loss"] for m in rest] == [m["train_loss"] for m in full[10:]]
