"""A two-node Ray cluster (``ray.cluster_utils.Cluster``): the head has no CPU for work, so
the precompute tasks and every trial must run on the worker node."""

import json

import pytest
import ray
from ray.cluster_utils import Cluster

from selmatch_tune.presets import smoke
from selmatch_tune.search import run_search


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_trials_land_on_the_worker_node(two_nodes, tmp_path) -> None:
    _, worker = two_nodes
    config = smoke().replace(ipcs=(2,), beta_grid=(0.0, 0.5), alpha_grid=(0.5, 1.0))
    rows = run_search(config, tmp_path / "multi", log=lambda *_: None)
    assert [r["ipc"] for r in rows] == [2]
    results = list((tmp_path / "multi" / "ray").glob("*-ipc2/*/result.json"))
    assert len(results) >= 2
    for path in results:
        last = json.loads(path.read_text().strip().splitlines()[-1])
        assert last["node_id"] == worker.node_id
