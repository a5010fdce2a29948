"""Every shipped cluster file passes Ray's own offline validation and critbatch's exposure rules;
broken ones fail with a message naming the field and the fix. No cloud is contacted."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tune_jobs.cluster import ClusterConfigError, check_cluster_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "cluster.yaml", *sorted((REPO / "cluster").glob("*.yaml"))]


def test_shipped_cluster_files_are_all_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SHIPPED}
    assert {"cluster.yaml", "cluster/gcp.yaml", "cluster/onprem.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_cluster_file_validates_offline(path: Path) -> None:
    cfg = check_cluster_config(path)  # Ray's prepare_config + validate_config, then our rules
    raw = yaml.safe_load(path.read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    commands = [str(c) for k, v in cfg.items() if k.endswith("commands") for c in v]
    text = "\n".join(commands)
    assert "uv sync --frozen" in text  # the committed lock, nothing resolved on the cluster
    assert "--dashboard-host=127.0.0.1" in text
    assert "mlflow server --host 127.0.0.1 --port 5000" in text
    assert "sqlite:///$HOME/mlflow/mlflow.db" in text  # SQLite store under the home dir
    # the dataset is fetched once per node, guarded by a marker file
    fetch = [c for c in commands if "critbatch data download" in c]
    assert fetch and all(
        "test -f /data/.critbatch-fetched-" in c and "--root /data" in c for c in fetch
    )
    if raw["provider"]["type"] == "local":
        return
    # cloud files: a CPU-only head, GPU workers that scale from zero, a spot type as an option
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}
    assert all(
        t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 for t in workers.values()
    )
    assert any(t["max_workers"] > 0 for t in workers.values())
    assert any("spot" in n for n in workers)
    # nothing but SSH open to the internet: no extra inbound rules at all
    assert not raw["provider"].get("security_group", {}).get("IpPermissions")


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture
def aws() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _error(path: Path) -> str:
    with pytest.raises(ClusterConfigError) as e:
        check_cluster_config(path)
    return str(e.value)


def test_unknown_top_level_field_is_named_with_a_suggestion(tmp_path: Path, aws: dict) -> None:
    aws["max_worker"] = aws.pop("max_workers")
    msg = _error(_write(tmp_path, aws))
    assert "max_worker: unknown field" in msg and "did you mean `max_workers`" in msg


def test_missing_node_resources_names_the_node_type(tmp_path: Path, aws: dict) -> None:
    del aws["available_node_types"]["gpu.g5"]["resources"]
    msg = _error(_write(tmp_path, aws))
    assert "available_node_types.gpu.g5.resources: required field is missing" in msg
    assert "resources: {CPU: 4, GPU: 1}" in msg


def test_fractional_resources_are_rejected_with_the_field(tmp_path: Path, aws: dict) -> None:
    aws["available_node_types"]["gpu.g5"]["resources"]["GPU"] = 0.5
    msg = _error(_write(tmp_path, aws))
    assert "available_node_types.gpu.g5.resources.GPU" in msg and "whole numbers" in msg


def test_head_node_type_must_exist(tmp_path: Path, aws: dict) -> None:
    aws["head_node_type"] = "ray.head.default"
    assert "head_node_type" in _error(_write(tmp_path, aws))


def test_min_workers_above_max_workers(tmp_path: Path, aws: dict) -> None:
    aws["available_node_types"]["gpu.p4d"]["min_workers"] = 2
    msg = _error(_write(tmp_path, aws))
    assert "available_node_types.gpu.p4d.min_workers" in msg and "raise max_workers" in msg


def test_unknown_provider_gets_a_suggestion(tmp_path: Path, aws: dict) -> None:
    aws["provider"]["type"] = "awss"
    msg = _error(_write(tmp_path, aws))
    assert "provider.type" in msg and "did you mean 'aws'" in msg


def test_onprem_needs_its_machines(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "cluster/onprem.yaml").read_text())
    del cfg["provider"]["worker_ips"]
    msg = _error(_write(tmp_path, cfg))
    assert "provider.worker_ips" in msg


def test_public_dashboard_is_refused(tmp_path: Path, aws: dict) -> None:
    aws["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        for c in aws["head_start_ray_commands"]
    ]
    msg = _error(_write(tmp_path, aws))
    assert "head_start_ray_commands" in msg and "--dashboard-host=127.0.0.1" in msg


def test_public_mlflow_is_refused(tmp_path: Path, aws: dict) -> None:
    aws["head_start_ray_commands"] = [
        c.replace("--host 127.0.0.1", "--host 0.0.0.0") for c in aws["head_start_ray_commands"]
    ]
    msg = _error(_write(tmp_path, aws))
    assert (
        "MLflow server must listen on 127.0.0.1" in msg and "ray attach cluster.yaml -p 5000" in msg
    )


def test_opening_a_port_to_the_internet_is_refused(tmp_path: Path, aws: dict) -> None:
    cfg = copy.deepcopy(aws)
    cfg["provider"]["security_group"] = {"IpPermissions": [
        {"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}  # fmt: skip
    msg = _error(_write(tmp_path, cfg))
    assert "provider.security_group.IpPermissions[0]" in msg and "remove the rule" in msg


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: [type: aws\n")
    assert "not valid YAML" in _error(bad)
    assert "does not exist" in _error(tmp_path / "nope.yaml")


CRITBATCH = str(Path(sys.executable).parent / "critbatch")  # the console script users run


def test_cluster_check_command_exit_codes(tmp_path: Path, aws: dict) -> None:
    ok = subprocess.run([CRITBATCH, "cluster-check", "cluster.yaml", "cluster/gcp.yaml"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "cluster.yaml: ok" in ok.stdout and "gpu.g5: workers 0..8 g5.xlarge" in ok.stdout
    del aws["available_node_types"]["head"]["node_config"]
    bad = subprocess.run([CRITBATCH, "cluster-check", str(_write(tmp_path, aws))],
                         cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert "available_node_types.head.node_config: required field is missing" in bad.stderr
