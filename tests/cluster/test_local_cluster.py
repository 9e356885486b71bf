"""cluster/local_cluster.sh end to end: a real multi-node Ray cluster on this machine (Ray's
fake multi-node provider), a small search run on it as a cluster's user runs one (no
--address: it finds the cluster where `ray start` recorded it) whose trials must spread over
two or more nodes of that cluster, and a stop that leaves none of the processes it started
alive."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
# A small search: 1 IPC, 2 β and 2 α values (2 trials at a time, on 2 single-CPU nodes).
SMALL = ["--ipcs", "2", "--beta-grid", "0,0.5", "--alpha-grid", "0.5,1.0"]


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a live process from a later one with the same PID
    (None when the process is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def recorded(state: Path) -> list[tuple[int, str]]:
    lines = (state / "pids").read_text().split("\n")
    return [(int(pid), started) for pid, started in (ln.split() for ln in lines if ln.strip())]


def still_alive(state: Path) -> list[int]:
    return [pid for pid, started in recorded(state) if start_time(pid) == started]


def with_temp_dir(state: Path) -> list[int]:
    """Processes whose command line names the cluster's Ray temp dir."""
    marker = f"{state}/ray/".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def trial_nodes(out: Path) -> list[str]:
    nodes = []
    for path in sorted(out.glob("ray/*/*/result.json")):
        last = path.read_text().strip().splitlines()[-1]
        nodes.append(json.loads(last)["node_id"])
    return nodes


@pytest.fixture
def state() -> Iterator[Path]:
    """A short state folder (Ray's socket paths must stay under 108 bytes); stopped and removed
    whatever happens in the test."""
    folder = Path(tempfile.mkdtemp(prefix="rlc-", dir="/tmp"))
    yield folder
    subprocess.run([str(SCRIPT), "stop"], env=_env(folder), capture_output=True, timeout=180)
    shutil.rmtree(folder, ignore_errors=True)


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "LOCAL_CLUSTER_DIR": str(folder)}


def run(state: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the script in its own process group; on a timeout the whole group (the search's
    driver included) gets SIGTERM, then the fixture's stop ends the cluster."""
    with subprocess.Popen(
        [str(SCRIPT), *args],
        env=_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=60)
            raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 0, (
        f"local_cluster.sh {args[0]} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.mark.slow
def test_start_smoke_stop(state: Path, tmp_path: Path) -> None:
    run(state, "start", timeout=180)
    assert len(recorded(state)) >= 6  # gcs, raylets, monitor, agents of 2 nodes
    # Where a driver with no address and RAY_TMPDIR=state looks (Ray's default temp dir there).
    address = (state / "address").read_text().strip()
    assert (state / "ray" / "ray_current_cluster").read_text().strip() == address
    status = run(state, "status")
    assert "ray.worker.cpu" in status.stdout or "recorded processes alive" in status.stdout

    out = tmp_path / "smoke"
    smoke = run(state, "smoke", "--out", str(out), *SMALL, timeout=300)
    assert f"the search attached to the cluster at {address}" in smoke.stdout
    assert "trials ran on" in smoke.stdout
    nodes = trial_nodes(out)
    assert len(nodes) >= 4, f"expected 4+ trial results, got {len(nodes)}"
    assert len(set(nodes)) >= 2, f"all trials ran on one node: {set(nodes)}"
    assert (out / "best_hparams.csv").is_file()

    run(state, "stop", timeout=180)
    assert still_alive(state) == [], "recorded processes alive after stop"
    assert with_temp_dir(state) == [], "cluster processes alive after stop"
    assert not (state / "ray" / "ray_current_cluster").exists(), "a stopped cluster is findable"
    after = subprocess.run([str(SCRIPT), "status"], env=_env(state), capture_output=True)
    assert after.returncode == 3


def test_smoke_without_a_cluster_fails_clearly(state: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "smoke"], env=_env(state), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "no local cluster is running" in result.stderr


#: Stands in for python: records how local_cluster.sh runs the search (the environment that
#: decides which Ray it finds, and its arguments); the check after it (a script on stdin) passes.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = - ]; then cat >/dev/null; exit 0; fi
printf '%s|%s|%s\\n' "${RAY_TMPDIR-unset}" "${RAY_ADDRESS-unset}" "$*" >>"$CALLS"
"""


def test_smoke_runs_the_search_as_on_a_clusters_head(state: Path, tmp_path: Path) -> None:
    """No --address, even with RAY_ADDRESS in the caller's environment: the search must find
    the cluster the way a search on a real head does, in Ray's default temp dir, which the
    script points at its state folder (RAY_TMPDIR)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(FAKE_PYTHON)
    (fake / "ray").write_text("#!/bin/sh\nexit 0\n")
    for program in fake.iterdir():
        program.chmod(0o755)
    calls = tmp_path / "calls"
    with subprocess.Popen(["sleep", "120"]) as stand_in:  # the "cluster" smoke finds running
        try:
            (state / "pids").write_text(f"{stand_in.pid} {start_time(stand_in.pid)}\n")
            (state / "address").write_text("192.0.2.2:6379\n")
            env = {
                **_env(state),
                "LOCAL_CLUSTER_BIN": str(fake),
                "CALLS": str(calls),
                "RAY_ADDRESS": "192.0.2.9:6379",
            }
            result = subprocess.run(
                [str(SCRIPT), "smoke", "--out", str(tmp_path / "out"), "--ipcs", "2"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            stand_in.kill()
    assert result.returncode == 0, result.stderr
    [search] = calls.read_text().splitlines()
    tmpdir, address, args = search.split("|")
    assert args.split() == [
        "tune/search_alpha_beta.py",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "out"),
        "--ipcs",
        "2",
    ]
    assert tmpdir == str(state) and address == "unset"
