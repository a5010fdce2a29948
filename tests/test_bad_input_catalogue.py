"""The bad-input catalogue: every mistake a user made in issue 12 (and its neighbours) gets a
clean error from `critbatch check` *and* from `critbatch run`: exit code 2, a message naming
the field, no traceback, nothing written (no run folder, no MLflow store or run).

In-process (``main(argv)``), so the whole catalogue takes seconds: `run` refuses each case
before it starts Ray, which is the point.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tune_jobs.cli import main
from tune_jobs.preflight import local_gpus

GOOD = {
    "name": "bad-input",
    "workload": "digits_mlp",
    "batch_sizes": [8, 16],
    "target": {"metric": "eval_accuracy", "value": 0.9, "direction": "max"},
    "budget": {"max_steps": 20},
    "resources": {"cpus": 1},
}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A case: (id, field the message must name, how to make it). ``make(tmp) -> argv tail`` writes
# what it needs under tmp (the job file at tmp/job.yaml by default) and returns the arguments
# after the command name. ``secret``: a string that must not be echoed.
Case = tuple[str, str, Callable[[Path], list[str]]]


def job(**changes) -> Callable[[Path], list[str]]:
    """The good job with top-level or dotted fields changed (None deletes a field)."""

    def make(tmp: Path) -> list[str]:
        data = yaml.safe_load(yaml.safe_dump(GOOD))
        for key, value in changes.items():
            node, *path = key.split("__")
            target = data
            for k in [node, *path][:-1]:
                target = target.setdefault(k, {})
            last = [node, *path][-1]
            if value is None:
                target.pop(last, None)
            else:
                target[last] = value
        p = tmp / "job.yaml"
        p.write_text(yaml.safe_dump(data))
        return [str(p)]

    return make


def raw(content: bytes | str, name: str = "job.yaml") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        p = tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return [str(p)]

    return make


def flags(*argv: str, **changes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return [*job(**changes)(tmp), *argv]

    return make


def uri(make_uri: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        return job(tracking={"uri": make_uri(tmp)})(tmp)

    return make


def storage_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return job(storage=str(tmp / "afile" / "runs"))(tmp)


def sqlite_is_folder(tmp: Path) -> list[str]:
    (tmp / "store.db").mkdir()
    return job(tracking={"uri": f"sqlite:///{tmp / 'store.db'}"})(tmp)


def job_is_folder(tmp: Path) -> list[str]:
    (tmp / "jobdir").mkdir()
    return [str(tmp / "jobdir")]


NAN, INF = float("nan"), float("inf")
CASES: list[Case] = [
    # the job file itself
    ("binary job file", "job file", raw(b"\x00\x01\x02name: x\x00")),
    ("non-UTF-8 job file", "job file", raw(b"\xff\xfe\xfaname")),
    ("empty job file", "job file", raw(b"")),
    ("job file only a comment", "job file", raw("# nothing\n")),
    ("job file is a list", "job.yaml", raw("- name: x\n")),
    ("job file is a scalar", "job.yaml", raw("hello\n")),
    ("job file broken YAML", "job.yaml", raw("name: [x\n")),
    ("job file missing", "job file", lambda tmp: [str(tmp / "nope.yaml")]),
    ("job file is a folder", "job file", job_is_folder),
    # --set
    ("--set into a string field", "--set name.x", flags("--set", "name.x=1")),
    ("--set unfinished YAML", "--set batch_sizes", flags("--set", "batch_sizes=[8,")),
    ("--set without =", "--set", flags("--set", "batch_sizes")),
    ("--set unknown field", "budget.max_stepz", flags("--set", "budget.max_stepz=5")),
    ("--set empty field name", "--set", flags("--set", ".x=1")),
    ("--set into a list", "--set batch_sizes.x", flags("--set", "batch_sizes.x=1")),
    # name
    ("name ..", "name", job(name="..")),
    ("name .", "name", job(name=".")),
    ("name hidden", "name", job(name=".hidden")),
    ("name with a slash", "name", job(name="a/b")),
    ("name empty", "name", job(name="")),
    ("name too long", "name", job(name="x" * 300)),
    ("name not a string", "name", job(name=[1])),
    # workload, batch sizes, seeds
    ("unknown workload", "workload", job(workload="digitz")),
    ("unknown top-level field", "batch_size", job(batch_size=8)),
    ("batch_sizes empty", "batch_sizes", job(batch_sizes=[])),
    ("batch size 0", "batch_sizes[1]", job(batch_sizes=[8, 0])),
    ("batch size 2^40", "batch_sizes[0]", job(batch_sizes=[1099511627776])),
    ("batch size over the training set", "batch_sizes[1]", job(batch_sizes=[8, 4096])),
    ("batch sizes duplicated", "batch_sizes", job(batch_sizes=[8, 8])),
    ("batch sizes a string", "batch_sizes", job(batch_sizes="8,16")),
    ("batch size a float", "batch_sizes[1]", job(batch_sizes=[8, 16.5])),
    ("seeds empty", "seeds", job(seeds=[])),
    # numbers: NaN and inf wherever a number is read
    ("resources.cpus NaN", "resources.cpus", job(resources={"cpus": NAN})),
    ("resources.cpus inf", "resources.cpus", job(resources={"cpus": INF})),
    ("resources.gpus NaN", "resources.gpus", job(resources={"gpus": NAN})),
    ("resources.gpus negative", "resources.gpus", job(resources={"gpus": -1})),
    (
        "gpus_from_batch_size NaN",
        "resources.gpus_from_batch_size",
        job(resources={"gpus_from_batch_size": {8: NAN}}),
    ),  # fmt: skip
    (
        "reduction_factor NaN",
        "early_stopping.reduction_factor",
        job(early_stopping={"reduction_factor": NAN}),
    ),  # fmt: skip
    (
        "reduction_factor 1",
        "early_stopping.reduction_factor",
        job(early_stopping={"reduction_factor": 1}),
    ),  # fmt: skip
    ("plateau NaN", "early_stopping.plateau", job(early_stopping={"plateau": NAN})),
    ("plateau 1", "early_stopping.plateau", job(early_stopping={"plateau": 1})),
    ("plateau negative", "early_stopping.plateau", job(early_stopping={"plateau": -0.01})),
    (
        "strategy.base_lr NaN",
        "strategy.base_lr",
        job(strategy={"name": "blr", "base_lr": NAN, "base_batch_size": 8}),
    ),  # fmt: skip
    (
        "strategy.base_lr inf",
        "strategy.base_lr",
        job(strategy={"name": "lsr", "base_lr": INF, "base_batch_size": 8}),
    ),  # fmt: skip
    (
        "strategy.decay_epochs NaN",
        "strategy.decay_epochs[0]",
        job(strategy={"name": "blr", "base_lr": 0.1, "base_batch_size": 8, "decay_epochs": [NAN]}),
    ),  # fmt: skip
    ("divergence_factor NaN", "divergence_factor", job(divergence_factor=NAN)),
    ("divergence_factor inf", "divergence_factor", job(divergence_factor=INF)),
    ("lr_search.min NaN", "lr_search.min", job(lr_search={"min": NAN})),
    ("lr_search.max -inf", "lr_search.max", job(lr_search={"max": -INF})),
    ("lr_search min above max", "lr_search", job(lr_search={"min": 0.5, "max": 0.1})),
    ("lr_search.lag_stop NaN", "lr_search.lag_stop", job(lr_search={"lag_stop": NAN})),
    (
        "convergence_tolerance 2",
        "lr_search.convergence_tolerance",
        job(lr_search={"convergence_tolerance": 2}),
    ),  # fmt: skip
    ("budget.epochs inf", "budget.epochs", job(budget={"epochs": INF})),
    ("data.fraction NaN", "data.fraction", job(data={"fraction": NAN})),
    ("data.fraction 0", "data.fraction", job(data={"fraction": 0})),
    ("optimizer.momentum NaN", "optimizer.momentum", job(optimizer={"momentum": NAN})),
    # target
    ("target.value NaN", "target.value", job(target__value=NAN)),
    ("target accuracy 1.5", "target.value", job(target__value=1.5)),
    ("target accuracy 95 (percent)", "target.value", job(target__value=95)),
    (
        "target loss below 0",
        "target.value",
        job(target={"metric": "eval_loss", "value": -0.1, "direction": "min"}),
    ),  # fmt: skip
    ("target metric unknown", "target.metric", job(target__metric="accuracy")),
    ("target direction wrong", "target.direction", job(target__direction="min")),
    ("budget both steps and epochs", "budget", job(budget={"max_steps": 10, "epochs": 1})),
    ("eval_every 0", "eval_every", job(eval_every=0)),
    ("eval_every a float", "eval_every", job(eval_every=1.5)),
    ("strategy unknown", "strategy.name", job(strategy={"name": "fancy"})),
    ("lr_search.algorithm unknown", "lr_search.algorithm", job(lr_search={"algorithm": "bo"})),
    (
        "lr_search.algorithm old name tpe",
        "lr_search.algorithm",
        job(lr_search={"algorithm": "tpe"}),
    ),
    ("micro_batch_size negative", "micro_batch_size", job(micro_batch_size=-1)),
    ("max_failures negative", "max_failures", job(max_failures=-1)),
    # workload options (each workload declares its own)
    ("options unknown key", "options.widht", job(options={"widht": 64})),
    ("options wrong type", "options.width", job(options={"width": "wide"})),
    (
        "options float NaN",
        "options.noise_scale",
        job(
            workload="nqm_exact",
            options={"noise_scale": NAN},
            target={"metric": "eval_loss", "value": 0.1, "direction": "min"},
        ),
    ),  # fmt: skip
    # tracking store
    ("tracking scheme unsupported", "tracking.uri", uri(lambda tmp: "ftp://example.org/x")),
    (
        "tracking postgresql without driver",
        "tracking.uri",
        uri(lambda tmp: "postgresql://user:s3cret-pw@db.example/x"),
    ),  # fmt: skip
    ("tracking closed port", "tracking.uri", uri(lambda tmp: f"http://127.0.0.1:{closed_port()}")),
    (
        "tracking password not echoed",
        "tracking.uri",
        uri(lambda tmp: f"http://user:s3cret-pw@127.0.0.1:{closed_port()}"),
    ),  # fmt: skip
    (
        "tracking SQLite in a missing folder",
        "tracking.uri",
        uri(lambda tmp: f"sqlite:///{tmp / 'missing' / 'mlflow.db'}"),
    ),  # fmt: skip
    ("tracking SQLite path is a folder", "tracking.uri", sqlite_is_folder),
    # storage, data, resources
    ("storage /etc/passwd", "storage", job(storage="/etc/passwd")),
    ("storage under a file", "storage", storage_file),
    ("storage a URI", "storage", job(storage="s3://bucket/runs")),
    (
        "cifar10 data missing",
        "data.root",
        lambda tmp: job(
            workload="cifar10_alexnet",
            target={"metric": "eval_accuracy", "value": 0.5, "direction": "max"},
            data={"root": str(tmp / "no-data")},
        )(tmp),
    ),  # fmt: skip
    ("gpus without a GPU", "resources.gpus", job(resources={"gpus": local_gpus() + 1})),
    ("cpus beyond the machine", "resources.cpus", job(resources={"cpus": 100000})),
    ("--num-cpus 0", "--num-cpus", flags("--num-cpus", "0")),
    ("--num-cpus negative", "--num-cpus", flags("--num-cpus", "-3")),
    ("--address unreachable", "--address", flags("--address", "127.0.0.1:9")),
]

SECRET = "s3cret-pw"


def _assert_clean(rc, out: str, err: str, field: str) -> None:
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err, err
    assert field in err, f"{field!r} not named in: {err}"
    assert SECRET not in out + err


def _assert_nothing_written(tmp: Path, before: set[Path]) -> None:
    written = {p for p in tmp.rglob("*")} - before
    assert not written, f"written: {sorted(map(str, written))}"


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(("field", "make"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(command, field, make, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage and sqlite:///mlflow.db default here
    argv = make(tmp_path)
    before = set(tmp_path.rglob("*"))
    try:
        rc = main([command, *argv, *(["--no-progress"] if command == "run" else [])])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    _assert_clean(rc, out, err, field)
    _assert_nothing_written(tmp_path, before)


def test_catalogue_covers_the_issue():
    assert len(CASES) >= 50
    if importlib.util.find_spec("psycopg2") is not None:  # the driver case needs it absent
        pytest.fail("psycopg2 is installed here; the missing-driver case tests nothing")


def test_good_job_checks_ok_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = job()(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert main(["check", *argv]) == 0
    assert "ok:" in capsys.readouterr().out
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize("command", ["check", "run"])
def test_existing_and_live_sweep_names_are_refused(command, tmp_path, capsys, monkeypatch):
    """A finished sweep's name, and a name a live process holds (its flock), are refused."""
    monkeypatch.chdir(tmp_path)
    argv = job()(tmp_path)
    run_dir = tmp_path / "critbatch_runs" / GOOD["name"]
    run_dir.mkdir(parents=True)
    fd = os.open(run_dir / ".critbatch.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 4242 on testhost\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    before = set(tmp_path.rglob("*"))
    try:
        rc = main([command, *argv, *(["--no-progress"] if command == "run" else [])])
    finally:
        os.close(fd)
    out, err = capsys.readouterr()
    _assert_clean(rc, out, err, "name")
    assert "running now" in err and "pid 4242" in err
    _assert_nothing_written(tmp_path, before)
    (run_dir / "sweep.json").write_text("{}")
    before = set(tmp_path.rglob("*"))
    rc = main([command, *argv, *(["--no-progress"] if command == "run" else [])])
    out, err = capsys.readouterr()
    _assert_clean(rc, out, err, "name")
    assert "already exists" in err
    _assert_nothing_written(tmp_path, before)


def _csv(content: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / "steps.csv"
        p.write_bytes(content)
        return p

    return make


@pytest.mark.parametrize(
    "make",
    [_csv(b""), _csv(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00"), _csv(b"batch_size,steps\n")],
    ids=["empty", "binary", "header only"],
)
def test_fit_errors_name_the_file(make, tmp_path, capsys):
    path = make(tmp_path)
    assert main(["fit", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert str(path) in err, err


def test_analyze_against_a_closed_port_fails_fast_and_clean(tmp_path, capsys):
    """issue 12: `analyze X --tracking-uri http://127.0.0.1:9` waited 250 s, then a traceback."""
    rc = main(["analyze", "X", "--tracking-uri", f"http://user:{SECRET}@127.0.0.1:{closed_port()}",
               "--out", str(tmp_path / "r")])  # fmt: skip
    out, err = capsys.readouterr()
    _assert_clean(rc, out, err, "--tracking-uri")
    assert not (tmp_path / "r").exists()
