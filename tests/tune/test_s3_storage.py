"""Tune's storage in S3, from a cluster of three nodes (``ray.cluster_utils.Cluster``: a head
with no CPU for work and two workers of one CPU each). moto's server on 127.0.0.1 stands in
for S3; the AWS variables point pyarrow at it (``FileSystem.from_uri`` reads
``AWS_ENDPOINT_URL``), in this process and in every process started after them: the nodes,
their workers and the search's driver."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.fs
import pytest
import ray
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer
from ray.cluster_utils import Cluster

from selmatch.core.config import ConfigError
from selmatch_tune.cluster.storage import check_storage, node_probe
from selmatch_tune.flow import phases as phases_module

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "selmatch"


@pytest.fixture(scope="module")
def s3():
    """A bucket in moto's server (a free port on loopback), stopped after the module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no wait for an EC2 metadata service
        }.items():
            patch.setenv(name, value)
        # S3FileSystem() itself ignores AWS_ENDPOINT_URL (only from_uri reads it)
        store = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        store.create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    server.stop()


@pytest.fixture(scope="module")
def three_nodes(s3):
    """The cluster, started after the AWS variables are set (its processes inherit them)."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def _objects(uri: str) -> list[str]:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    selector = pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True)
    found = filesystem.get_file_info(selector)
    return [i.path for i in found if i.type == pyarrow.fs.FileType.File]


def test_the_driver_checks_a_bucket_and_a_missing_one_is_a_one_line_error(s3) -> None:
    assert check_storage(f"{s3}/alone", log=lambda _: None) == 1  # no Ray: the driver alone
    assert _objects(f"{s3}/alone") == []
    with pytest.raises(ConfigError, match=r"^--storage s3://missing/ray: the driver cannot") as e:
        check_storage("s3://missing/ray", log=lambda _: None)
    assert "\n" not in str(e.value)


def test_an_abandoned_experiment_is_removed_from_the_bucket(s3) -> None:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(f"{s3}/old")
    for name in ("beta-ipc2/trial/result.json", "alpha-ipc2/trial/result.json"):
        with filesystem.open_output_stream(f"{path}/{name}") as stream:
            stream.write(b"{}")
    phases_module._remove_experiment(f"{s3}/old/beta-ipc2")
    assert _objects(f"{s3}/old") == [f"{path}/alpha-ipc2/trial/result.json"]
    phases_module._remove_experiment(f"{s3}/old/never-made")  # nothing to remove


@pytest.mark.slow
def test_every_node_checks_the_bucket_and_a_failing_node_is_named(three_nodes, s3) -> None:
    _, workers = three_nodes
    lines: list[str] = []
    assert check_storage(f"{s3}/check", log=lines.append) == 3
    assert lines == [f"storage {s3}/check: checked on 3 node(s), each wrote and read it"]
    assert _objects(f"{s3}/check") == []  # the check folder is removed
    victim = workers[1].node_id

    def fails_on_one_node(folder: str, token: str, node_id: str) -> None:
        if node_id == victim:
            raise OSError("no such mount on this node")
        node_probe(folder, token, node_id)

    with pytest.raises(ConfigError) as raised:
        check_storage(f"{s3}/check", log=lines.append, probe=fails_on_one_node)
    message = str(raised.value)
    assert "\n" not in message and len(lines) == 1
    assert message.startswith(f"--storage {s3}/check is not shared by every node")
    assert f"({victim[:8]}) cannot read the driver's file" in message
    assert "OSError: no such mount on this node" in message
    assert workers[0].node_id[:8] not in message
    assert message.endswith("(NFS, EFS) or a bucket: s3://bucket/path or gs://bucket/path")
    assert _objects(f"{s3}/check") == []


def _finished(log: Path, symbol: str) -> set[str]:
    """Trial ids that the search reported as completed on the terminal."""
    return set(re.findall(symbol + r" = [^(]+\(trial (\w+)[^)]*\): val", log.read_text()))


@pytest.mark.slow
def test_a_search_in_s3_from_two_workers_survives_a_sigkill_of_its_driver(
    three_nodes, s3, tmp_path
) -> None:
    cluster, workers = three_nodes
    out, storage = tmp_path / "run", f"{s3}/searches"
    command = [
        sys.executable,
        str(ROOT / "tune" / "search_alpha_beta.py"),
        "--preset",
        "smoke",
        "--ipcs",
        "2",
        "--beta-grid",
        "0,0.5",
        "--no-random-reference",
        "--final-epochs",
        "2",
        "--address",
        cluster.address,
        "--storage",
        storage,
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed_log = tmp_path / "killed.txt"
    with killed_log.open("w") as stdout:
        driver = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.monotonic() + 300
    while not (before := _finished(killed_log, "α")) and driver.poll() is None:
        assert time.monotonic() < deadline, "no α trial finished in 5 minutes"
        time.sleep(0.1)
    assert driver.poll() is None, killed_log.read_text()[-3000:]
    before |= _finished(killed_log, "β")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver only: the cluster is not its child
    driver.wait(timeout=60)
    assert f"storage {storage}/run-" in killed_log.read_text()
    assert "checked on 3 node(s)" in killed_log.read_text()
    state = json.loads((out / "search_state.json").read_text())
    assert "alpha" not in state["ipcs"]["2"]  # a partial α search is not a result

    resumed = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "restoring the interrupted alpha search at IPC 2" in resumed.stdout
    state = json.loads((out / "search_state.json").read_text())
    experiments = f"{storage}/{state['storage_id']}"
    assert not (out / "ray").exists()  # nothing of Tune's on the driver's disk
    # every trial's results in the bucket, from both workers
    filesystem, _ = pyarrow.fs.FileSystem.from_uri(storage)
    nodes = set()
    for path in _objects(experiments):
        if path.endswith("/result.json"):
            with filesystem.open_input_stream(path) as stream:
                nodes.add(json.loads(stream.read().decode().strip().splitlines()[-1])["node_id"])
    assert nodes == {w.node_id for w in workers}
    assert any("/alpha-ipc2/" in p and "/checkpoint_" in p for p in _objects(experiments))
    # the winner's set, read back from the bucket
    entry = state["ipcs"]["2"]
    assert entry["set_dir"] == str(out / "sets" / "ipc2")
    assert (out / "sets" / "ipc2" / "manifest.json").is_file()
    # one MLflow child run per trial: none lost, none doubled
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_experiment_by_name("selmatch-search").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
    )
    per_trial = Counter(c.data.tags["trial_id"] for c in children)
    baselines = entry["beta"]["random"]["n"] + entry["alpha"].get("mtt", {}).get("n", 0)
    assert set(per_trial.values()) == {1}
    assert sum(per_trial.values()) == entry["beta"]["trials"] + entry["alpha"]["trials"] + baselines
    # the trials finished before the kill are there (one the kill caught before Tune saved its
    # state reruns under its own id and is logged once)
    assert before <= set(per_trial)
    assert {c.info.status for c in children} == {"FINISHED"}
