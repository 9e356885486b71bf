"""cluster/cluster.yaml (AWS) and cluster/local.yaml (fake multi-node) against Ray 2.60's own
cluster config schema, the way ``ray up`` checks them, plus the project's own rules: token
authentication on every node, MLflow on the head's private address, never 0.0.0.0."""

from __future__ import annotations

import copy
import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster" / "cluster.yaml"
LOCAL = ROOT / "cluster" / "local.yaml"
MLFLOW_HOST = "\"$(hostname -I | awk '{print $1}')\""


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` validates for an AWS config: merged with Ray's AWS defaults."""
    return prepare_config(copy.deepcopy(config))


def commands(config: dict[str, Any], *keys: str) -> list[str]:
    return [cmd for key in keys for cmd in config.get(key, [])]


def test_aws_config_passes_ray_schema() -> None:
    config = prepared(load(AWS))
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]


def test_local_config_passes_ray_schema() -> None:
    # The fake provider has no defaults file in Ray 2.60, so the monitor validates it as is.
    config = load(LOCAL)
    validate_config(config)
    assert config["provider"]["type"] == "fake_multinode"


def _unknown_key(c: dict[str, Any]) -> None:
    c["head_node_typ"] = "ray.head.default"


def _text_gpu_count(c: dict[str, Any]) -> None:
    next(iter(c["available_node_types"].values()))["resources"]["GPU"] = "one"


def _no_node_config(c: dict[str, Any]) -> None:
    del next(iter(c["available_node_types"].values()))["node_config"]


def _negative_cpus(c: dict[str, Any]) -> None:
    next(iter(c["available_node_types"].values()))["resources"]["CPU"] = -1


def _text_max_workers(c: dict[str, Any]) -> None:
    c["max_workers"] = "four"


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
@pytest.mark.parametrize(
    "breakage",
    [_unknown_key, _text_gpu_count, _negative_cpus, _no_node_config, _text_max_workers],
)
def test_broken_copy_fails_validation(path: Path, breakage: Any) -> None:
    config = load(path)
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepared(broken) if path == AWS else broken)


def test_aws_nodes_head_cpu_and_gpu_workers() -> None:
    config = load(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "InstanceType" in head["node_config"] and "ImageId" in head["node_config"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker type offers a GPU"
    for node_type in gpu:
        assert node_type["min_workers"] == 0
        assert 1 <= node_type["max_workers"] <= config["max_workers"]


def test_aws_start_commands_use_token_auth() -> None:
    config = load(AWS)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts, f"{key} has no `ray start`"
        for cmd in starts:
            assert "RAY_AUTH_MODE=token" in cmd, f"{key}: `ray start` without RAY_AUTH_MODE=token"
            assert "RAY_AUTH_TOKEN_PATH=" in cmd, f"{key}: `ray start` without the token path"
            assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1" in cmd, f"{key}: CUDA override missing"
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", config["head_start_ray_commands"][1])
    assert token_path and token_path.group(1) in config["file_mounts"], "token not mounted"


def test_aws_mlflow_binds_the_private_address() -> None:
    config = load(AWS)
    servers = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(servers) == 1, "expected one `mlflow server` command on the head"
    server = servers[0]
    assert f"--host {MLFLOW_HOST}" in server
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in server
    assert re.search(r"--workers [1-4]\b", server)
    # The host expression yields this machine's first address, a private one, not 0.0.0.0.
    first = subprocess.run(
        ["bash", "-c", "hostname -I | awk '{print $1}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    address = ipaddress.ip_address(first)
    assert address.is_private and not address.is_unspecified and not address.is_loopback


def test_aws_config_never_binds_all_interfaces() -> None:
    text = AWS.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "0.0.0.0" not in body
    assert "--dashboard-host=127.0.0.1" in text


def test_aws_setup_installs_the_project_with_torch_pins() -> None:
    setup = " ".join(load(AWS)["setup_commands"])
    assert "pip install -e '.[tune]'" in setup
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup


def test_aws_commands_are_valid_bash() -> None:
    config = load(AWS)
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")  # fmt: skip
    for cmd in commands(config, *keys):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"bash syntax error in {cmd!r}: {result.stderr}"


def test_aws_header_lists_the_commands() -> None:
    header = AWS.read_text().split("\ncluster_name:")[0]
    for command in ("ray up", "ray submit", "ray exec", "ray attach", "ray down",
                    "--address auto", "--storage", "--tracking-uri http://", "ssh -i"):  # fmt: skip
        assert command in header, f"header lacks {command!r}"


def test_local_config_matches_the_fake_cluster_recipe() -> None:
    config = load(LOCAL)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"]["CPU"] >= 1
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert [(t["min_workers"], t["max_workers"]) for t in workers] == [(1, 2)]
    assert config["provider"]["disable_node_updaters"] is True
