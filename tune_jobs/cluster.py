"""Ray clusters: lint a cluster.yaml offline, and submit a job to a cluster as a Ray Job.

:func:`submit_job` sends the job as a Ray Job: the entrypoint is ``python -m tune_jobs.cli run JOB``,
and the driver runs on the head node, next to the MLflow server. The job's working_dir is the
repo; for a user workload (``module:function``) it is the user's folder (the job file's, or
``--working-dir``), and critbatch's own packages travel beside it as ``py_modules``, so every
worker imports the user's module and critbatch without either being installed there. The job
is validated here first, including what only matters on a cluster: its run
folder and tracking store must outlive the job's temporary working_dir.

:func:`check_cluster_config` (``critbatch cluster-check``) runs before ``ray up``, when there
is neither a cluster nor a job to submit. It runs Ray's own
offline validation (defaults, schema, node types) and critbatch's rules for a safe cluster
(dashboard and MLflow bound to 127.0.0.1, no ports but SSH open to the internet).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from trainables.api import InputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"  # `ray dashboard cluster.yaml` forwards it here
# Not uploaded with the code: environments, local results, data (Ray also honours .gitignore).
WORKING_DIR_EXCLUDES = [
    ".venv",
    ".git",
    "critbatch_runs",
    "mlruns",
    "*.db",
    "test-artifacts",
    "data",
]
PROVIDERS = ("aws", "gcp", "azure", "local", "kuberay", "vsphere", "aliyun", "external")


class ClusterConfigError(InputError):
    """A cluster.yaml that `ray up` would reject, or that would expose a port: names the field and the fix."""


# ---- cluster-check ------------------------------------------------------------------------
def _field(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _schema_error(e: Any) -> str:
    """A jsonschema error as `field: what is wrong; the fix`."""
    where = _field(e.absolute_path)
    if e.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", e.message) or re.findall(
            r"'([^']+)'", e.message
        )
        allowed = list((e.schema.get("properties") or {}).keys())
        name = extra[0] if extra else "?"
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = (
            f"did you mean `{close[0]}`?"
            if close
            else f"allowed here: {', '.join(allowed) or 'none'}"
        )
        field = f"{where}.{name}" if where != "(top level)" else name
        return f"{field}: unknown field; {hint}"
    if e.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", e.message)
        name = missing[0] if missing else "?"
        field = f"{where}.{name}" if where != "(top level)" else name
        fix = {
            "resources": "give the node's Ray resources, e.g. resources: {CPU: 4, GPU: 1} (whole numbers)",
            "node_config": "give the provider's instance settings, e.g. node_config: {InstanceType: g5.xlarge}",
            "provider": "add provider: {type: aws, region: us-west-2} (or gcp, local)",
        }.get(name, f"add `{name}:`")
        return f"{field}: required field is missing; {fix}"
    if e.validator == "type":
        return f"{where}: {e.instance!r} should be {e.validator_value}; fix its type (resources are whole numbers)"
    if e.validator == "minimum":
        return f"{where}: {e.instance!r} is below {e.validator_value}; use a value >= {e.validator_value}"
    return f"{where}: {e.message}"


def _critbatch_rules(cfg: dict[str, Any]) -> list[str]:
    """critbatch's own rules: nothing but SSH reachable from outside the cluster."""
    problems = []
    head_cmds = " ".join(str(c) for c in cfg.get("head_start_ray_commands") or [])
    m = re.search(r"--dashboard-host[= ]+(\S+)", head_cmds)
    if re.search(r"\bray start\b[^;&|]*--head", head_cmds) and (
        m is None or m.group(1) not in ("127.0.0.1", "localhost")
    ):
        problems.append(
            "head_start_ray_commands: `ray start --head` must bind the dashboard to 127.0.0.1 "
            "(add --dashboard-host=127.0.0.1); reach it with `ray dashboard cluster.yaml`"
        )
    every_cmd = [
        str(c) for k, v in cfg.items() if k.endswith("commands") and isinstance(v, list) for c in v
    ]
    for c in every_cmd:
        if "mlflow server" in c or "mlflow ui" in c:
            h = re.search(r"--host[= ]+(\S+)", c)
            if h is None or h.group(1) not in ("127.0.0.1", "localhost"):
                problems.append(
                    "head_start_ray_commands: the MLflow server must listen on 127.0.0.1 only "
                    "(`mlflow server --host 127.0.0.1 --port 5000`); reach it with `ray attach cluster.yaml -p 5000`"
                )
    sg = (cfg.get("provider") or {}).get("security_group") or {}
    for i, rule in enumerate(sg.get("IpPermissions") or []):
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        if public and not (rule.get("FromPort") == 22 and rule.get("ToPort") == 22):
            problems.append(
                f"provider.security_group.IpPermissions[{i}]: opens ports {rule.get('FromPort')}-{rule.get('ToPort')} "
                "to the internet; remove the rule (Ray already allows SSH, and traffic between nodes) and use SSH forwards"
            )
    return problems


def check_cluster_config(path: str | Path) -> dict[str, Any]:
    """Validate a Ray cluster launcher file offline; returns the config as `ray up` would fill it.

    Runs Ray's own ``prepare_config`` (provider defaults, on-prem node types, per-type worker
    limits) and ``validate_config`` (the launcher's JSON schema and node-type rules), then
    critbatch's exposure rules. Cloud look-ups (`bootstrap_config`: key pairs, subnets,
    resources of an instance type) need credentials and are left to `ray up`.
    Raises :class:`ClusterConfigError` naming the field and the fix.
    """
    import jsonschema

    from tune_jobs.ray_internals import validate_cluster_config

    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError(
            f"cluster file {str(p)!r} does not exist; give the path to a cluster.yaml (see cluster/ for variants)"
        )
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ClusterConfigError(
            f"{p}: not valid YAML ({e}); fix the syntax at the line shown"
        ) from None
    if not isinstance(raw, dict):
        raise ClusterConfigError(
            f"{p}: a cluster file is a YAML mapping (cluster_name, provider, available_node_types, ...)"
        )
    if not isinstance(raw.get("cluster_name"), str) or not raw.get("cluster_name"):
        raise ClusterConfigError(
            f"{p}: cluster_name: required; give the cluster a name, e.g. cluster_name: critbatch"
        )
    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise ClusterConfigError(
            f"{p}: provider: required field is missing; add provider: {{type: aws, region: us-west-2}} (or gcp, local)"
        )
    if provider["type"] not in PROVIDERS:
        close = difflib.get_close_matches(str(provider["type"]), PROVIDERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ClusterConfigError(
            f"{p}: provider.type: unknown provider {provider['type']!r}; {hint}use one of {', '.join(PROVIDERS)}"
        )
    if provider["type"] == "local" and ("head_ip" not in provider or "worker_ips" not in provider):
        raise ClusterConfigError(
            f"{p}: provider.head_ip / provider.worker_ips: an on-prem (local) cluster lists its machines; add both"
        )
    if provider["type"] == "local" and raw.get("available_node_types"):
        raise ClusterConfigError(
            f"{p}: available_node_types: not allowed with provider.type local (Ray detects each machine's CPUs and GPUs); remove it"
        )
    for name, nt in (raw.get("available_node_types") or {}).items():
        if isinstance(nt, dict) and nt.get("min_workers", 0) > nt.get(
            "max_workers", nt.get("min_workers", 0)
        ):
            raise ClusterConfigError(
                f"{p}: available_node_types.{name}.min_workers: above its max_workers; lower min_workers or raise max_workers"
            )
    try:
        cfg = validate_cluster_config(raw)
    except jsonschema.ValidationError as e:
        raise ClusterConfigError(f"{p}: {_schema_error(e)}") from None
    except (ValueError, KeyError, AssertionError, RuntimeError) as e:
        raise ClusterConfigError(
            f"{p}: {e}; see the fields of cluster.yaml in docs/cluster.md"
        ) from None
    except Exception as e:  # cli_logger.abort raises click's exception with Ray's own message
        raise ClusterConfigError(f"{p}: rejected by Ray's cluster launcher: {e}") from None
    problems = _critbatch_rules(cfg)
    if problems:
        raise ClusterConfigError(f"{p}: " + f"\n{p}: ".join(problems))
    return cfg


def check_job_for_cluster(job: Any) -> None:
    """What a job needs on a cluster that a local run does not: results that outlive the Ray
    job's temporary working_dir, in places every node can reach."""
    from tune_jobs.config import JobError

    if "://" not in job.storage and not Path(job.storage).expanduser().is_absolute():
        raise JobError(
            f"storage: {job.storage!r} is relative, so the run folder would land in the Ray job's temporary "
            "working_dir and be lost; use a folder every node mounts, e.g. storage: /shared/critbatch_runs"
        )
    uri = job.tracking.uri
    if uri.startswith("sqlite:///") and not uri.removeprefix("sqlite:///").startswith(("/", "~")):
        raise JobError(
            f"tracking.uri: {uri!r} is relative to the Ray job's temporary working_dir; use the head node's "
            "MLflow server, tracking.uri: http://127.0.0.1:5000 (or an absolute sqlite:////path.db)"
        )


def submit_job(
    job_path: str | Path,
    *,
    address: str | None = None,
    overrides: list[str] | None = None,
    working_dir: str | Path | None = None,
    python: str = "python",
    submission_id: str | None = None,
) -> tuple[Any, str]:
    """Validate a job file and submit it as a Ray Job; returns (client, submission id)."""
    from tune_jobs.config import JobError
    from tune_jobs.job_file import load_job, parse_overrides

    overrides = overrides or []
    job_file = Path(job_path).resolve()
    user_code = _names_user_code(job_file)
    wd = Path(working_dir).resolve() if working_dir else (job_file.parent if user_code else REPO)
    try:
        rel = job_file.relative_to(wd)
    except ValueError:
        raise InputError(
            f"JOB: {str(job_path)!r} is outside the working_dir {wd} that is uploaded to the cluster; "
            "put the job file in that folder or pass --working-dir with a folder that holds it"
        ) from None
    job = load_job(job_file, parse_overrides(overrides))
    check_job_for_cluster(job)
    if user_code:
        from tune_jobs.preflight import check_user_code

        code_dir = Path(job.code_dir)
        if code_dir != wd and wd not in code_dir.parents:
            raise JobError(f"code_dir: {code_dir} is outside the working_dir {wd} that is shipped "
                           "to the cluster; pass --working-dir with a folder that holds both")  # fmt: skip
        check_user_code(job)

    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD
    if not address.startswith(("http://", "https://")):
        raise InputError(
            f"--address: {address!r} is not a dashboard URL; `critbatch submit` talks to the Ray Jobs API, "
            f"e.g. --address {DEFAULT_DASHBOARD} after `ray dashboard cluster.yaml`"
        )
    from ray.exceptions import AuthenticationError

    from tune_jobs.ray_internals import use_auth_token_if_present

    # A cluster with token auth (Ray >= 2.52; `ray start` turns it on when ~/.ray/auth_token
    # exists) answers 401 without the token. `ray start` and `ray.init(address=...)` use a token
    # they find, but the Jobs client only sends it when RAY_AUTH_MODE=token: do as `ray start`.
    use_auth_token_if_present()
    try:
        client = JobSubmissionClient(address)
    except AuthenticationError as e:
        raise InputError(
            f"--address: the Ray dashboard at {address} refused the request ({str(e).splitlines()[0]}); "
            "it uses token authentication: copy the cluster's token (`ray get-auth-token` on the head) "
            "to ~/.ray/auth_token here, or set RAY_AUTH_TOKEN"
        ) from None
    except Exception as e:  # ConnectionError, or a RuntimeError from the handshake
        raise InputError(
            f"--address: no Ray dashboard answers at {address} ({e.__class__.__name__}); run "
            f"`ray dashboard cluster.yaml` (it forwards {DEFAULT_DASHBOARD}) or give --address"
        ) from None
    args = " ".join(["run", str(rel)] + [f"--set {o}" for o in overrides])
    sid = submission_id or f"critbatch-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    client.submit_job(
        entrypoint=f"{python} -m tune_jobs.cli {args}",
        submission_id=sid,
        runtime_env=runtime_env_for(wd),
        metadata={"critbatch.job": job.name, "critbatch.experiment": job.experiment},
    )
    return client, sid


CRITBATCH_PACKAGES = ("trainables", "tune_jobs", "analysis")


def runtime_env_for(working_dir: Path) -> dict[str, Any]:
    """Ray's runtime_env of a submitted sweep: ``working_dir`` is uploaded and is every
    process's current folder and first import path; when it is not this repo, critbatch's
    packages are uploaded with it as ``py_modules``."""
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES}
    if working_dir.resolve() != REPO:
        env["py_modules"] = [str(REPO / p) for p in CRITBATCH_PACKAGES]
    return env


def _names_user_code(job_file: Path) -> bool:
    """Does the job name a user workload (``module:function``)? (Before validation: the
    answer picks the working_dir; the job is validated right after.)"""
    try:
        data = yaml.safe_load(job_file.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and ":" in str(data.get("workload", ""))


def wait_for_job(client: Any, sid: str, timeout: float = 24 * 3600, echo: bool = True) -> str:
    """Follow a submitted job until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED).

    The log is streamed (the dashboard's websocket tail: each line once, however long a
    multi-day sweep's log grows); if the stream breaks, the rest is polled, printing only
    what was not shown yet."""
    import asyncio

    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    shown = 0
    if echo:

        async def follow() -> None:
            nonlocal shown
            async for chunk in client.tail_job_logs(sid):
                print(chunk, end="", flush=True)
                shown += len(chunk)

        try:
            asyncio.run(asyncio.wait_for(follow(), timeout))
        except TimeoutError:
            pass
        except Exception as e:  # the stream broke (head restarted, proxy): poll the rest
            print(f"\n(the log stream of {sid} broke: {e}; polling instead)", file=sys.stderr)
    while time.time() < deadline:
        status = client.get_job_status(sid)
        if echo:
            logs = client.get_job_logs(sid)
            print(logs[shown:], end="", flush=True)
            shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value if hasattr(status, "value") else status)
        time.sleep(2.0)
    raise TimeoutError(f"job {sid} still running after {timeout:.0f} s")
