"""The driver's memory at a sweep's end, one step at a time, on a finished run folder.

After ``tuner.fit()`` the driver reads the journal's records (the sweep's table), writes the
metrics snapshot on the parent run (``tune_jobs.sweep.write_snapshot``: every point fetched
back from MLflow) and computes the sweep's numbers (``tune_jobs.sweep.sweep_numbers_of``:
``analysis.load_ray.load_ray_folder`` over every trial's ``result.json``, then
``analysis.compare.sweep_numbers``). Python keeps what it freed, so what each step allocates
at its peak adds to the driver's RSS at the last trial. This measures each step's peak above
the RSS it started from, each in a fresh process (``ru_maxrss`` of that process minus its RSS
once everything is imported), and ``end``: the whole sequence as ``_fit`` runs it.

``FOLDER`` is what ``benchmarks/load_500.py`` leaves in /tmp (``critbatch-load-*``: the SQLite
MLflow store and ``runs/<job name>``). ``snapshot`` and ``end`` build the snapshot's parquet
(every point fetched) without uploading it or tagging the parent run: the folder is not
changed.

    .venv/bin/python benchmarks/sweep_end_memory.py /tmp/critbatch-load-XXXX
    .venv/bin/python benchmarks/sweep_end_memory.py FOLDER --steps ray-before,ray --repeat 2

Steps: ``journal`` (what the end keeps of it: the table's rows; every record in older
trees), ``snapshot``, ``ray`` (``load_ray_folder``), ``ray-before`` (the
``load_ray_folder`` and ``tidy_frame`` of commit fb81cda, kept below: per-trial frames
concatenated 256 at a time), ``numbers`` (``sweep_numbers_of``: ``ray`` plus the
analysis), ``end``. ``--check`` also compares the frames of ``ray`` and ``ray-before``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS = ("journal", "snapshot", "ray-before", "ray", "numbers", "end")


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_ray_folder_before(path):
    """``analysis.load_ray.load_ray_folder`` as of fb81cda (the 'before' arm)."""
    import pandas as pd

    from analysis.load_ray import _folder_target
    from analysis.load_tidy import SweepNotFoundError, with_devices
    from analysis.mlflow_layout import DEVICE_NAME

    path = Path(path)
    results = sorted(path.rglob("result.json"))
    if not results:
        raise SweepNotFoundError(f"no trial results under {path}")
    blocks, frames = [], []
    for f in results:
        frame = _trial_frame_before(f)
        if not frame.empty:
            frames.append(frame)
        if len(frames) == 256:
            blocks.append(pd.concat(frames, ignore_index=True))
            frames = []
    if frames:
        blocks.append(pd.concat(frames, ignore_index=True))
    df = pd.concat(blocks, ignore_index=True)
    del blocks, frames
    names = df.pop(DEVICE_NAME).dropna().unique() if DEVICE_NAME in df else []
    df = with_devices(tidy_frame_before(df), names)
    df.attrs["sweep_name"] = path.resolve().name
    target = _folder_target(path)
    if target is not None:
        df.attrs["target"] = target
    return df


def tidy_frame_before(df):
    """``analysis.load_tidy.tidy_frame`` as of fb81cda."""
    import pandas as pd

    from analysis.frame import NON_METRIC_COLUMNS, PHASE_COLUMN, REQUIRED_COLUMNS

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
    return out.reset_index(drop=True)


def _trial_frame_before(result_json: Path):
    import pandas as pd

    from analysis.frame import PHASE_COLUMN
    from analysis.mlflow_layout import STEP_LR, is_tune_key
    from trainables.api import final_status

    rows = [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]
    if not rows:
        return pd.DataFrame()
    cfg = rows[-1].get("config", {})
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
        **({PHASE_COLUMN: cfg["phase"]} if "phase" in cfg else {}),
    )


def run_dir_of(folder: Path) -> Path:
    dirs = [p.parent for p in (folder / "runs").glob("*/sweep.json")]
    if len(dirs) != 1:
        raise SystemExit(f"expected one runs/<name>/sweep.json under {folder}, found {dirs}")
    return dirs[0]


def one_step(step: str, run_dir: Path, check: bool) -> dict:
    """Run ``step`` in this process (fresh: the caller starts one per step)."""
    import gc

    import analysis.compare  # noqa: F401  (imported before the start RSS, as in the driver)
    from analysis.load_ray import load_ray_folder
    from analysis.loaders import open_client
    from tune_jobs.job_file import parse_stored_job
    from tune_jobs.journal import journal_path, read_records
    from tune_jobs.publish import write_metrics_snapshot  # noqa: F401
    from tune_jobs.sweep import SWEEP_FILE, sweep_numbers_of, write_snapshot

    meta = json.loads((run_dir / SWEEP_FILE).read_text())
    job = parse_stored_job(meta["job"])
    client = open_client(meta["tracking_uri"])
    # The snapshot is built (every point fetched, the parquet written) but not uploaded: the
    # store's artifact root may be another folder's, and the upload is not what is measured.
    client.log_artifact = client.set_tag = lambda *a, **k: None
    client.get_run(meta["parent_run_id"])  # the store opened before the start RSS
    gc.collect()
    start, t0 = rss_mib(), time.time()
    out: dict = {"step": step}
    try:  # only the table's rows held (since the end-of-sweep memory change)
        from tune_jobs.journal import iter_records as records_of
    except ImportError:  # an older tree: every record held through the end
        records_of = read_records
    if step == "journal":  # what the end holds of the journal
        records = records_of(journal_path(run_dir))
        trials = [r["row"] for r in records]
        out["trials"] = len(trials)
    elif step == "snapshot":
        out["points"] = write_snapshot(client, meta["parent_run_id"], run_dir)
    elif step in ("ray", "ray-before"):
        df = (load_ray_folder if step == "ray" else load_ray_folder_before)(run_dir)
        out["rows"] = len(df)
    elif step == "numbers":
        numbers = sweep_numbers_of(job, run_dir)
        out["b_crit"] = None if numbers is None or numbers.fit is None else numbers.fit.b_crit
    elif step == "end":  # as tune_jobs.sweep._fit after the fit
        records = records_of(journal_path(run_dir))
        trials = sorted((r["row"] for r in records),
                        key=lambda t: (t["batch_size"], t["seed"], t["study"] or "", t["lr"]))  # fmt: skip
        out["points"] = write_snapshot(client, meta["parent_run_id"], run_dir)
        numbers = sweep_numbers_of(job, run_dir)
        out["trials"] = len(trials)
    else:
        raise ValueError(step)
    out |= {"seconds": round(time.time() - t0, 1), "start_mib": round(start),
            "peak_mib": round(peak_mib()), "peak_above_start_mib": round(peak_mib() - start)}  # fmt: skip
    if check and step in ("ray", "ray-before"):
        import pandas as pd

        other = (load_ray_folder_before if step == "ray" else load_ray_folder)(run_dir)
        pd.testing.assert_frame_equal(df, other, check_exact=True)
        assert df.attrs == other.attrs, (df.attrs, other.attrs)
        out["frames_equal"] = True
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a /tmp/critbatch-load-* folder (or its run dir)")
    ap.add_argument("--steps", default="journal,snapshot,ray-before,ray,numbers,end")
    ap.add_argument("--repeat", type=int, default=1, help="each step this many times, alternating")
    ap.add_argument("--check", action="store_true", help="ray and ray-before give equal frames")
    ap.add_argument("--json", type=Path, help="append each result as a JSON line")
    ap.add_argument("--arms", default=f"this={ROOT}",
                    help="NAME=REPO,...: the code measured (e.g. a git worktree of an older "
                         "commit), each step run once per arm, alternating (default: this tree)")  # fmt: skip
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this step here
    ap.add_argument("--root", help=argparse.SUPPRESS)  # internal: with the code of this repo
    args = ap.parse_args(argv)
    run_dir = args.folder if (args.folder / "sweep.json").exists() else run_dir_of(args.folder)
    if args.one:
        sys.path.insert(0, args.root or str(ROOT))
        print(json.dumps(one_step(args.one, run_dir, args.check)))
        return 0
    arms = dict(a.split("=", 1) for a in args.arms.split(","))
    steps = args.steps.split(",")
    if bad := [s for s in steps if s not in STEPS]:
        raise SystemExit(f"unknown steps {bad}; choose from {STEPS}")
    print(
        f"{'arm':<8} {'step':<11} {'start MiB':>9} {'peak MiB':>9} {'peak-start':>10} {'s':>6}  other"
    )
    for _ in range(args.repeat):
        for step, (arm, root) in ((s, a) for s in steps for a in arms.items()):
            cmd = [sys.executable, __file__, str(run_dir), "--one", step, "--root", root]
            res = subprocess.run(cmd + (["--check"] if args.check else []), check=True,
                                 capture_output=True, text=True)  # fmt: skip
            r = json.loads(res.stdout.strip().splitlines()[-1]) | {"arm": arm, "root": root}
            rest = {k: v for k, v in r.items() if k not in
                    ("step", "start_mib", "peak_mib", "peak_above_start_mib", "seconds", "arm",
                     "root")}  # fmt: skip
            print(f"{arm:<8} {step:<11} {r['start_mib']:>9} {r['peak_mib']:>9} "
                  f"{r['peak_above_start_mib']:>10} {r['seconds']:>6}  {rest}", flush=True)  # fmt: skip
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
