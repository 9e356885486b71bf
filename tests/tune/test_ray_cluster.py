"""Which Ray a search uses (ray.init()'s order: --address, RAY_ADDRESS, the cluster `ray start`
recorded on this node if it answers, else a new local one) and ``--gpus-per-trial``'s values;
the GPU a Ray worker is given must be one torch sees."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from selmatch.core.config import ConfigError
from selmatch_tune.cluster.ray_cluster import LOCAL, find_cluster
from selmatch_tune.search_alpha_beta import apply_sets, build_parser, main
from selmatch_tune.settings.config import AUTO
from selmatch_tune.settings.presets import smoke


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node with no Ray of its own: Ray's temp dir is empty, no RAY_ADDRESS. Returns the
    file where `ray start` records its cluster's address."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


@pytest.fixture
def listening() -> Iterator[str]:
    """``127.0.0.1:PORT`` where something answers (as a cluster's GCS would)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_with_no_cluster_on_the_node_a_local_ray_is_started(node: Path) -> None:
    found = find_cluster(None)
    assert found.address is None and found.source == "no Ray cluster on this node"


def test_the_cluster_ray_start_recorded_on_this_node_is_attached(node: Path, listening) -> None:
    node.write_text(listening + "\n")
    found = find_cluster(None)
    assert found.address == listening
    assert "`ray start` runs on this node" in found.source and str(node) in found.source
    # --address local still starts a new one, an explicit address wins over the record
    assert find_cluster(LOCAL).address is None
    assert find_cluster("10.1.2.3:6379").address == "10.1.2.3:6379"


def test_a_recorded_cluster_that_does_not_answer_is_not_attached(node: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on any more
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    node.write_text(address)
    found = find_cluster(None)
    assert found.address is None
    assert f"names {address}, which does not answer" in found.source


def test_ray_address_comes_before_the_record(
    node: Path, listening, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.write_text(listening)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert find_cluster(None).address == "10.1.2.3:6379"
    assert find_cluster(None).source == "RAY_ADDRESS"
    monkeypatch.setenv("RAY_ADDRESS", LOCAL)
    assert find_cluster(None).address is None


def test_gpus_per_trial_is_auto_or_a_number() -> None:
    assert smoke().gpus_per_trial == AUTO
    args = build_parser().parse_args(["--gpus-per-trial", "0.5"])
    assert args.gpus_per_trial == "0.5"
    assert apply_sets(smoke(), ["gpus_per_trial=0.5"]).gpus == 0.5
    assert smoke().replace(gpus_per_trial="2").gpus_per_trial == 2.0
    with pytest.raises(ValueError, match="auto must be resolved against the cluster"):
        _ = smoke().gpus
    for bad in ("many", "-1", -0.5):
        with pytest.raises(
            ConfigError,
            match=r"^--gpus-per-trial must be auto or a number|"
            r"^--gpus-per-trial must be a number in \[0, ∞\)",
        ):
            smoke().replace(gpus_per_trial=bad)


def test_a_bad_gpus_per_trial_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "smoke", "--gpus-per-trial", "some", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "search_alpha_beta: error: --gpus-per-trial some: must be auto or a number "
        "in [0, ∞), got 'some'"
    )
