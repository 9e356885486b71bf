"""The search as a cluster user starts it: on a node of a running Ray cluster, with no
``--address``, it attaches to that cluster (not a private Ray), says so with the cluster's
nodes, CPUs and GPUs, and gives each trial a GPU (``--gpus-per-trial auto``). The cluster is
``ray.cluster_utils.Cluster`` on this machine, its worker node declaring 2 GPUs to Ray (logical
GPUs: Ray schedules them, there is no device); the trials train on the CPU
(``device=cpu``), and without that setting the search stops with one line: the GPU Ray gave
is not one torch sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[2]
SEARCH = [
    sys.executable,
    str(ROOT / "tune" / "search_alpha_beta.py"),
    "--preset",
    "smoke",
    "--ipcs",
    "2",
    "--beta-grid",
    "0,0.5",
    "--alpha-grid",
    "1",
    "--full-eval-top",
    "0",
    "--no-mtt-candidate",
    "--final-epochs",
    "2",
]
ON_CPU = ["--override", "short.device=cpu", "--override", "final.device=cpu"]


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[tuple[Cluster, Any, dict[str, str]]]:
    """A head with no CPU for work and a worker with 2 CPUs and 2 logical GPUs; its address
    recorded in a Ray temp dir of its own (RAY_TMPDIR, short: Ray's socket paths), where a
    search run with the returned environment looks for the cluster of its node."""
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": temp, "PYTHONUNBUFFERED": "1"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", temp)
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        worker = cluster.add_node(num_cpus=2, num_gpus=2)
        cluster.wait_for_nodes()
        try:
            yield (
                cluster,
                worker,
                env | {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")},
            )
        finally:
            cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _search(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        SEARCH + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_search_on_a_cluster_node_attaches_and_its_trials_get_gpus(gpu_cluster, tmp_path):
    cluster, worker, env = gpu_cluster
    out = tmp_path / "run"
    done = _search([*ON_CPU, "--out", str(out)], env, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    attached = next(line for line in lines if line.startswith("attached to the Ray cluster"))
    assert cluster.address in attached and "`ray start` runs on this node" in attached
    assert attached.endswith("2 nodes, 2 CPUs, 2 GPUs")
    assert any(line.startswith("2 trial(s) at once, 1 CPU and 1 GPU each") for line in lines)
    assert not any(line.startswith("started a local Ray") for line in lines)
    results = list((out / "ray").glob("*-ipc2/*/result.json"))
    assert len(results) >= 4  # β 0 and 0.5, the random subset, α = 1
    for path in results:
        last = json.loads(path.read_text().strip().splitlines()[-1])
        assert last["gpus"] == 1 and last["node_id"] == worker.node_id


@pytest.mark.slow
def test_a_gpu_torch_cannot_see_stops_the_search_in_one_line(gpu_cluster, tmp_path):
    _, _, env = gpu_cluster
    done = _search(["--out", str(tmp_path / "run")], env, tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr, done.stderr[-5000:]
    assert last.startswith("search_alpha_beta: error: this worker on ")
    assert "was given 1 GPU (Ray's GPU ids [" in last and "sees no CUDA device" in last
    assert last.endswith("or search with --gpus-per-trial 0")
    assert "Traceback" not in done.stderr
