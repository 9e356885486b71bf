"""The MLflow UI hint a search prints last: it must lead to the experiment's runs table."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from selmatch_tune.results.tracking import Tracker, default_tracking_uri, ui_hint


def test_a_store_gets_the_command_that_serves_it_and_the_runs_address(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path / "my search")
    command, address = ui_hint(uri, "7")
    assert command.startswith("MLflow UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false ")
    words = shlex.split(command.removeprefix("MLflow UI: "))
    assert words[1:] == [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--workers",
        "1",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
    ]
    assert address.split() == ["then", "open", "http://127.0.0.1:5000/#/experiments/7/runs"]


def test_a_server_gets_its_runs_address() -> None:
    assert ui_hint("http://10.0.0.5:5000/", "3") == [
        "MLflow UI: open http://10.0.0.5:5000/#/experiments/3/runs"
    ]


def test_a_child_run_cut_short_by_a_kill_is_logged_afresh_and_a_complete_one_is_kept(
    tmp_path: Path,
) -> None:
    tracker = Tracker(default_tracking_uri(tmp_path), artifacts=tmp_path / "artifacts")
    tracker.start_parent("search", {"ipcs": [2]})
    # what a SIGKILL between create_run and set_terminated leaves: a RUNNING child, no metrics
    tracker.client.create_run(
        tracker.experiment_id,
        run_name="cut",
        tags={"mlflow.parentRunId": tracker.parent_id, "trial_id": "t1"},
    )
    assert not tracker.child_exists("t1")
    params = {f"p{i}": i for i in range(150)}  # more than one MLflow batch holds
    tracker.log_child("t1", "beta=0.1", {"phase": "beta"}, params, {"val_accuracy": 0.5}, False)
    tracker.log_child("t1", "again", {"phase": "beta"}, {}, {"val_accuracy": 0.9}, False)
    children = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_id}'"
    )
    assert [c.info.status for c in children] == ["FINISHED"]
    assert tracker.child_exists("t1")
    assert children[0].data.metrics == {"val_accuracy": 0.5}
    assert children[0].data.params == {k: str(v) for k, v in params.items()}
