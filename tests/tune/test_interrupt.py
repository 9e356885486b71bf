"""Interruptions of the command line as a user runs it, in its own process (its own local
Ray): Ctrl-C in the middle of the β phase's Tune experiment, ``--resume``, a SIGKILL of the
whole process group in the middle of the α phase, ``--resume`` again; nothing lost, nothing
doubled, nothing of the killed run left running."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def _finished_trials(log: Path, symbol: str = "β") -> set[str]:
    """Trial ids that the search reported as completed on the terminal."""
    return set(re.findall(symbol + r" = [^(]+\(trial (\w+)[^)]*\): val", log.read_text()))


def _wait_for(log: Path, process: subprocess.Popen, symbol: str) -> set[str]:
    deadline = time.monotonic() + 300
    while not (finished := _finished_trials(log, symbol)) and process.poll() is None:
        assert time.monotonic() < deadline, f"no {symbol} trial finished in 5 minutes"
        time.sleep(0.1)
    assert process.poll() is None, f"the search ended before a {symbol} trial was seen"
    return finished


@pytest.mark.slow
def test_ctrl_c_in_beta_then_sigkill_in_alpha_then_resume(tmp_path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "tune" / "search_alpha_beta.py"),
        "--preset",
        "smoke",
        "--ipcs",
        "2",
        "--beta-grid",
        "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
        "--out",
        str(out),
        # Tune's storage as a URI, as on a cluster (s3://...): restore must take it too
        "--storage",
        (tmp_path / "tune").as_uri(),
    ]
    log, errors = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with log.open("w") as stdout, errors.open("w") as stderr:  # files: Tune prints a lot
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _wait_for(log, process, "β")
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    process.wait(timeout=120)
    before = _finished_trials(log)
    assert process.returncode == 130, log.read_text()[-2000:] + errors.read_text()[-2000:]
    assert f"--out {out} --resume" in errors.read_text().strip().splitlines()[-1]
    state = json.loads((out / "search_state.json").read_text())
    assert "beta" not in state["ipcs"].get("2", {})  # a partial β search is not a result
    # under the shared storage, in a folder of this search's own
    state_id = state["storage_id"]
    assert state_id.startswith("run-") and (tmp_path / "tune" / state_id / "beta-ipc2").is_dir()
    assert not (out / "ray").exists()

    # --resume, killed (SIGKILL, the driver's whole process group) once an α trial is done
    killed_log = tmp_path / "killed.txt"
    with killed_log.open("w") as stdout:
        process = subprocess.Popen(
            [*command, "--resume"],
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    before |= _finished_trials(killed_log) | _wait_for(killed_log, process, "α")
    assert "restoring the interrupted beta search at IPC 2" in killed_log.read_text()
    # the driver and all it started: Ray's GCS, raylet, workers (psutil checks that a PID
    # still names the same process before it reports or signals it)
    ray_processes = psutil.Process(process.pid).children(recursive=True)
    assert ray_processes, "the search started no process"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    _, left = psutil.wait_procs(ray_processes, timeout=60)
    assert not left, f"processes of the killed search still running: {left}"
    state = json.loads((out / "search_state.json").read_text())
    assert "alpha" not in state["ipcs"]["2"]  # a partial α search is not a result

    resumed = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "restoring the interrupted alpha search at IPC 2" in resumed.stdout
    state = json.loads((out / "search_state.json").read_text())
    entry = state["ipcs"]["2"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_experiment_by_name("selmatch-search").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
    )
    ids = [c.data.tags["trial_id"] for c in children]
    baselines = entry["beta"]["random"]["n"] + entry["alpha"].get("mtt", {}).get("n", 0)
    trials = entry["beta"]["trials"] + entry["alpha"]["trials"] + baselines
    assert len(ids) == len(set(ids)) == trials
    assert before <= set(ids)  # the trials finished before each interruption kept, not rerun
    assert {c.info.status for c in children} == {"FINISHED"}
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
