"""cluster/cluster.yaml (AWS) and cluster/local.yaml (fake multi-node) against Ray 2.60's own
cluster config schema, the way ``ray up`` checks them, plus the project's own rules: token
authentication on every node, every node set up for what the search needs (the project, the
default dataset), the paper preset's data fetched, an MLflow server on the head's loopback,
never 0.0.0.0, no placeholder a user could miss, and docs that run the search the way a
cluster's user does (on the head, no --address)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster" / "cluster.yaml"
LOCAL = ROOT / "cluster" / "local.yaml"
BIN = Path(sys.executable).parent
COMMAND_KEYS = (
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
#: What a value left for the user to fill in looks like (ids of AWS resources included).
PLACEHOLDERS = (
    r"<[A-Za-z][\w .-]*>",
    r"(?i)example",
    r"(?i)\bx{3,}\b",
    r"(?i)changeme",
    r"(?i)replace-?me",
    r"(?i)my-bucket",
    r"(?i)\byour[-_]",
    r"\bTODO\b",
    r"\bFIXME\b",
    r"\b(?:ami|sg|subnet|vpc|fs)-[0-9a-f]{8,17}\b",
)
EDIT = "# EDIT:"


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` validates for an AWS config: merged with Ray's AWS defaults."""
    return prepare_config(copy.deepcopy(config))


def commands(config: dict[str, Any], *keys: str) -> list[str]:
    return [cmd for key in keys for cmd in config.get(key, [])]


def the_command(config: dict[str, Any], key: str, needle: str) -> str:
    found = [cmd for cmd in config[key] if needle in cmd]
    assert len(found) == 1, f"expected one {key} command with {needle!r}, got {len(found)}"
    return found[0]


def unmarked_placeholders(text: str) -> list[str]:
    """Placeholders in the values of a YAML text (its scalars: comments are not values) whose
    line lacks an ``# EDIT:`` comment, as ``line N: match``."""
    lines = text.splitlines()
    found = []
    todo = [yaml.compose(text)]
    while todo:
        node = todo.pop()
        if isinstance(node, yaml.MappingNode):
            todo += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            todo += node.value
        elif isinstance(node, yaml.ScalarNode):
            first, last = node.start_mark.line, node.end_mark.line
            for number in range(first, last + 1):
                if number >= len(lines):
                    continue
                line = lines[number]
                hits = [
                    m.group(0)
                    for p in PLACEHOLDERS
                    for m in re.finditer(p, line)
                    if m.group(0) in node.value
                ]
                if hits and EDIT not in line:
                    found += [f"line {number + 1}: {hit}" for hit in hits]
    return sorted(set(found))


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
            token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", cmd)
            assert token_path and token_path.group(1) in config["file_mounts"], "token not mounted"


def test_aws_every_node_gets_the_project_and_the_default_dataset() -> None:
    """``setup_commands`` run on every node (head and workers): the default dataset's Debian
    package, a venv with the project at its torch pins; the workers' own list undoes none."""
    config = load(AWS)
    setup = " ".join(config["setup_commands"])
    installs = [c for c in config["setup_commands"] if "apt-get" in c and " install " in c]
    assert any("dataset-fashion-mnist" in c.split() for c in installs), "no dataset package"
    assert "git clone" in setup and "python3 -m venv" in setup
    assert "pip install -e '.[tune]'" in setup
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup
    assert not commands(config, "worker_setup_commands"), "workers should need nothing more"


def test_aws_head_fetches_every_presets_dataset_with_the_projects_loader() -> None:
    """The head loads the dataset of every preset once through ``selmatch.data.load_dataset``
    with ``download=True`` (CIFAR-10 for the paper preset), into the data root every node
    exports: SELMATCH_DATA_ROOT, on the shared mount."""
    from selmatch_tune.settings.presets import PRESETS

    config = load(AWS)
    fetch = the_command(config, "head_setup_commands", "load_dataset")
    assert "from selmatch.data import load_dataset" in fetch and "download=True" in fetch
    datasets = {preset().dataset for preset in PRESETS.values()}
    assert "cifar10" in datasets
    for name in datasets:
        assert re.search(rf"\bfor name in [^;]*\b{re.escape(name)}\b", fetch), name
    root = re.search(r"SELMATCH_DATA_ROOT=(\S+?)'", " ".join(config["setup_commands"]))
    assert root, "setup_commands do not export SELMATCH_DATA_ROOT"
    mount = the_command(config, "setup_commands", "mount -t nfs4")
    shared = re.search(r"(/mnt/\w+) && \(mountpoint", mount)
    assert shared and root.group(1).startswith(shared.group(1) + "/"), "data root not shared"


def test_aws_fetch_command_loads_the_data_from_the_data_root(tmp_path: Path) -> None:
    """The head's fetch command itself, run here: CIFAR-10 already in the data root (a tiny
    copy in its binary format, so nothing is downloaded) and Fashion-MNIST from its package."""
    cifar = tmp_path / "data" / "cifar-10-batches-bin"
    cifar.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = np.arange(10, dtype=np.uint8)[:, None]
        np.concatenate([labels, rng.integers(0, 256, (10, 3072), dtype=np.uint8)], 1).tofile(
            cifar / name
        )
    (cifar / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    fetch = the_command(load(AWS), "head_setup_commands", "load_dataset")
    env = {
        **os.environ,
        "SELMATCH_DATA_ROOT": str(tmp_path / "data"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-c", fetch], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fashion-mnist: 60,000 train / 10,000 test" in result.stdout
    assert f"cifar10: 50 train / 10 test, 10 classes, 3x32x32, from {cifar}" in result.stdout


def test_aws_mlflow_server_on_the_heads_loopback() -> None:
    config = load(AWS)
    elsewhere = commands(
        config,
        "setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    assert not [c for c in elsewhere if "mlflow server" in c], "MLflow belongs on the head only"
    server = the_command(config, "head_setup_commands", "mlflow server")
    assert "--host 127.0.0.1 " in server
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in server
    assert re.search(r"--workers 1\b", server)
    assert '--backend-store-uri "sqlite:///$HOME/' in server, "store not on the head's disk"
    assert "setsid " in server and "server.pid" in server, "not detached, or no pid file"
    assert server.index("/health") < server.index("setsid "), "not idempotent: no check first"


@pytest.mark.slow
def test_aws_mlflow_command_starts_once_and_listens_on_loopback(tmp_path: Path) -> None:
    """The head's MLflow command, run here (a home of its own, a free port instead of 5000):
    it starts the server in a session of its own that outlives the shell and answers on
    127.0.0.1 only; run again, it leaves that server be."""
    import psutil

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = the_command(load(AWS), "head_setup_commands", "mlflow server")
    command = server.replace("5000", str(port))
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    pid_file = tmp_path / "mlflow" / "server.pid"
    try:
        first = subprocess.run(
            ["bash", "-c", f"({command})"], env=env, capture_output=True, text=True, timeout=200
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"MLflow server on the head: http://127.0.0.1:{port}" in first.stdout
        pid = int(pid_file.read_text())
        assert os.getsid(pid) == pid, "the server is not in a session of its own"
        again = subprocess.run(
            ["bash", "-c", f"({command})"], env=env, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        listening = [
            c.laddr
            for p in tree
            for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and {a.ip for a in listening} <= {"127.0.0.1"}, listening
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    finally:
        if pid_file.is_file():
            _stop(int(pid_file.read_text()))


def _stop(pid: int) -> None:
    """SIGTERM to the server the test started (its recorded pid), then wait for it and its
    worker; SIGKILL to what is left after 20 s."""
    import psutil

    try:
        server = psutil.Process(pid)
        tree = [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    server.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=20)
    for process in alive:
        process.kill()


def test_aws_config_never_binds_all_interfaces() -> None:
    text = AWS.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "0.0.0.0" not in body
    assert "--dashboard-host=127.0.0.1" in text


def test_aws_commands_are_valid_bash() -> None:
    for cmd in commands(load(AWS), *COMMAND_KEYS):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert result.returncode == 0, f"bash syntax error in {cmd!r}: {result.stderr}"


def test_aws_settings_are_defined_before_use() -> None:
    """Every ``$SELMATCH_*`` a command reads is exported by an earlier setup command (into the
    settings file that ~/.bashrc reads), which ~/.bashrc sources."""
    config = load(AWS)
    defined: set[str] = set()
    for cmd in commands(config, *COMMAND_KEYS):
        used = set(re.findall(r"\$\{?(SELMATCH_\w+)", cmd))
        assert used <= defined, f"{sorted(used - defined)} used before defined in {cmd!r}"
        defined |= set(re.findall(r"export (SELMATCH_\w+)=", cmd))
        defined |= set(re.findall(r"'(SELMATCH_\w+)=", cmd))
    assert {"SELMATCH_REPO", "SELMATCH_DATA_ROOT"} <= defined
    bashrc = the_command(config, "setup_commands", ".bashrc")
    env_file = re.search(r"> (~/\S+\.env)\b", config["setup_commands"][0])
    assert env_file and f"source {env_file.group(1)}" in bashrc


def test_aws_has_no_placeholder_without_edit() -> None:
    text = AWS.read_text()
    assert unmarked_placeholders(text) == []
    edits = [line for line in text.splitlines() if EDIT in line]
    assert all(len(line.split(EDIT, 1)[1].split()) >= 2 for line in edits), "EDIT says nothing"
    marked = " ".join(edits)
    for value in ("ImageId:", "region:", "SELMATCH_REPO=", "SELMATCH_EFS="):
        assert value in marked, f"{value} carries no EDIT comment"


#: Unmarked placeholders the check must find, each on a line that a comment can end.
UNMARKED = {
    "ami": "node_config:\n  ImageId: ami-0123456789abcdef0  # the AMI\n",
    "repository": "cmds:\n  - git clone https://github.com/EXAMPLE/x.git\n",
    "bucket": "x: s3://my-bucket/path\n",
    "angle-brackets": "x: --tracking-uri http://<head-private-ip>:5000\n",
}


@pytest.mark.parametrize("text", UNMARKED.values(), ids=UNMARKED)
def test_placeholder_check_finds_unmarked_ones(text: str) -> None:
    assert unmarked_placeholders(text), text
    assert unmarked_placeholders(text.rstrip("\n") + f"  {EDIT} what to put here\n") == []


def test_placeholder_check_refuses_one_inside_a_folded_command() -> None:
    """The lines of a folded command cannot carry a comment: a placeholder there has to move to
    a line that can (a settings line), however close an EDIT comment stands."""
    text = (
        "cmds:\n  - >-\n    sudo mount -t nfs4\n    fs-0123456789abcdef0.efs.amazonaws.com:/ "
        f"/mnt\n  {EDIT} the file system id above\n"
    )
    assert unmarked_placeholders(text) == ["line 4: fs-0123456789abcdef0"]


def _search_commands(text: str) -> list[str]:
    """The commands of a text (README, docs, a YAML header) that run the search, continuation
    lines joined (a trailing backslash, in shell or in a ``#`` comment)."""
    joined = re.sub(r"\\\n[#\s]*", " ", text)
    return [line for line in joined.splitlines() if "search_alpha_beta.py" in line]


@pytest.mark.parametrize(
    "path", [AWS, ROOT / "docs" / "cluster.md", ROOT / "README.md"], ids=lambda p: p.name
)
def test_cluster_docs_run_the_search_without_address(path: Path) -> None:
    """A cluster's user runs the search on the head with no --address: it attaches to the
    cluster there by itself (--address auto was the old way)."""
    text = path.read_text()
    if path.name == "README.md":
        text = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    runs = [c for c in _search_commands(text) if "--preset paper" in c]
    assert runs, f"{path.name} shows no paper search"
    for run in runs:
        assert "--address" not in run, run
        assert "--storage" in run, run
    assert "--address auto" not in text


def test_aws_header_lists_the_walk() -> None:
    header = AWS.read_text().split("\ncluster_name:")[0]
    for command in (
        "ray get-auth-token --generate",
        "ray up",
        "ray attach",
        "ray rsync-down",
        "ray down",
        "--storage",
        "--wait-for-resources",
        "--tracking-uri http://127.0.0.1:5000",
        "ray attach -p 5000",
    ):
        assert command in header, f"header lacks {command!r}"


def test_local_config_matches_the_fake_cluster_recipe() -> None:
    config = load(LOCAL)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0 and head["resources"]["CPU"] >= 1
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert [(t["min_workers"], t["max_workers"]) for t in workers] == [(1, 2)]
    assert config["provider"]["disable_node_updaters"] is True
