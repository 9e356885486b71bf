"""The MLflow UI hint a search prints last: it must lead to the experiment's runs table."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from selmatch_tune.tracking import default_tracking_uri, ui_hint


def test_a_store_gets_the_command_that_serves_it_and_the_runs_address(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path / "my search")
    command, address = ui_hint(uri, "7")
    assert command.startswith("MLflow UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false ")
    words = shlex.split(command.removeprefix("MLflow UI: "))
    assert words[1:] == [
        str(Path(sys.executable).parent / "mlflow"), "ui", "--workers", "1",
        "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5000",
    ]  # fmt: skip
    assert address.split() == ["then", "open", "http://127.0.0.1:5000/#/experiments/7/runs"]


def test_a_server_gets_its_runs_address() -> None:
    assert ui_hint("http://10.0.0.5:5000/", "3") == [
        "MLflow UI: open http://10.0.0.5:5000/#/experiments/3/runs"
    ]
