"""The prepared device check runs on CPU with --tiny, as the GPU run would, so it cannot rot:
every step row and every section is in its JSON, and the Markdown table is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from device_check import ROWS, SECTIONS, TINY  # noqa: E402


@pytest.mark.slow
def test_the_tiny_device_check_writes_every_row_and_section(tmp_path) -> None:
    out = tmp_path / "device-check"
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "device_check.sh"),
            "--tiny",
            "--threads",
            "1",
            "--out",
            str(out),
            "--search-out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "device_check.json").read_text())
    assert set(data["sections"]) == set(SECTIONS)
    rows = {(r["row"], r["n_steps"]): r for r in data["rows"]}
    assert set(rows) == {(name, n) for name in ROWS for n in TINY.steps}
    for (name, _), row in rows.items():
        lever = ROWS[name][1]
        if lever is not None and lever.cuda_graphs:  # CUDA only: refused on CPU, error kept
            assert row["status"] == "error" and "needs a CUDA device" in row["error"]
            continue
        assert row["status"] == "ok", row
        assert row["seconds"] > 0 and row["speedup_vs_default"] > 0
        assert row["peak_mib"] is None and row["x_floor"] is None  # no GPU, no peak
        trajectories = ROWS[name][2]
        assert row["trajectories"] == trajectories
        assert row["trajectories_per_s"] == pytest.approx(trajectories / row["seconds"])
        if trajectories > 1:  # another loss (the mean of E): not compared with the fp32 row
            assert "image_grad_rel_err" not in row
            continue
        limit = 0.5 if name == "bf16" else 1e-5  # float32 rounding; bf16 is far coarser
        assert row["image_grad_rel_err"] < limit, row
    assert rows[("default", TINY.steps[0])]["speedup_vs_default"] == 1.0
    for section in ("environment", "flops", "step", "expert_epoch", "eval_epoch", "search"):
        assert data["sections"][section]["status"] == "ok", data["sections"][section]
    assert data["sections"]["environment"]["peak_tflops"] is None
    flops = data["sections"]["flops"]["per_n"][str(TINY.steps[0])]["flops"]
    assert flops["memory-saving"] > flops["default"] > 0
    assert "dry run: nothing was started or written" in data["sections"]["search"]["output_tail"]
    table = (out / "device_check.md").read_text()
    assert "| N | row | E | status |" in table
    assert table.count("| cuda-graphs | 1 |") == table.count("| E8 | 8 |") == len(TINY.steps)


@pytest.mark.slow
def test_the_pipeline_fallback_runs_the_quick_trial_as_selmatch_commands(tmp_path) -> None:
    """Where Ray cannot be installed (a device machine), ``--search pipeline`` runs the library
    half of one quick-preset trial as selmatch commands on the real data, timed per stage."""
    out = tmp_path / "device-check"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "device_check.py"),
            "--tiny",
            "--threads",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
            "--search",
            "pipeline",
            "--search-out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    search = json.loads((out / "device_check.json").read_text())["sections"]["search"]
    assert search["status"] == "ok", search
    assert list(search["stages_s"]) == ["experts", "consistency", "distill", "evaluate"]
    assert all(seconds > 0 for seconds in search["stages_s"].values())
    assert 0 <= search["test_accuracy"] <= 1
    assert (tmp_path / "pipeline" / "distill" / "set.safetensors").is_file()
    table = (out / "device_check.md").read_text()
    assert "library pipeline of one quick-preset IPC 10 trial" in table


@pytest.mark.slow
def test_a_float64_reference_and_chosen_rows(tmp_path) -> None:
    """--reference float64 adds the default mode in float64 and measures every row against it;
    --rows keeps the run to the rows named; an unknown row is a one-line error."""
    out = tmp_path / "device-check"
    base = [
        sys.executable,
        str(ROOT / "benchmarks" / "device_check.py"),
        "--tiny",
        "--threads",
        "1",
        "--out",
        str(out),
        "--search",
        "skip",
    ]
    done = subprocess.run(
        [*base, "--rows", "default,plain-fp32", "--reference", "float64"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "device_check.json").read_text())
    names = [row["row"] for row in data["rows"] if row["n_steps"] == TINY.steps[0]]
    assert names == ["float64", "default", "plain-fp32"]
    for row in data["rows"]:
        if row["row"] != "float64":  # float32 against float64 on the tiny case: rounding
            assert 0 < row["image_grad_rel_err"] < 1e-5 and row["loss_rel_err"] < 1e-5, row
    assert "errors against the default mode in float64" in (out / "device_check.md").read_text()
    bad = subprocess.run([*base, "--rows", "default,turbo"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--rows must name rows among" in bad.stderr.splitlines()[-1]
