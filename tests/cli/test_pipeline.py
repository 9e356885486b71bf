"""experts → scores → window → window-sweep → evaluate, from the command line, tiny."""

import json
import subprocess
import sys

import numpy as np
import pytest


def selmatch(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "selmatch", *args], capture_output=True, text=True, check=False
    )
    return out


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "experts"
    out = selmatch(
        "experts",
        "--width",
        "4",
        "--num-experts",
        "2",
        "--epochs",
        "2",
        "--per-class",
        "30",
        "--batch-size",
        "64",
        "--out",
        str(directory),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert "2 expert(s) in" in out.stdout and "s per epoch" in out.stdout
    return directory


@pytest.mark.slow
def test_window_from_the_cli(experts_dir, tmp_path) -> None:
    out = selmatch(
        "window",
        "--scores",
        str(experts_dir),
        "--ipc",
        "10",
        "--beta",
        "0.5",
        "--alpha",
        "0.3",
        "--out",
        str(tmp_path / "w"),
    )
    assert out.returncode == 0, out.stderr
    assert "ipc-units" in out.stdout and "70 D_select + 30 D_distill" in out.stdout
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["window"]["beta_convention"] == "ipc-units"
    assert manifest["skipped_per_class"] == [5] * 10
    assert (tmp_path / "w" / "grid.png").is_file()
    lines = (tmp_path / "w" / "indices.csv").read_text().splitlines()
    assert len(lines) == 101 and lines[0] == "train_index,label,part"
    evaluated = selmatch(
        "evaluate",
        "--set",
        str(tmp_path / "w"),
        "--width",
        "4",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "30 distilled" in evaluated.stdout


def test_window_errors_are_one_line(experts_dir) -> None:
    out = selmatch("window", "--scores", str(experts_dir), "--ipc", "10", "--beta", "2.5")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "selmatch: error: --beta must be in [0, 2] for IPC 10 with 30 scored samples per class "
        "(ipc-units), got 2.5"
    )
    out = selmatch("window", "--scores", str(experts_dir), "--ipc", "5", "--score", "cscore")
    assert "--score must be one of el2n, forgetting" in out.stderr


@pytest.mark.slow
def test_window_sweep_from_the_cli(experts_dir, tmp_path) -> None:
    out = selmatch(
        "window-sweep",
        "--scores",
        str(experts_dir),
        "--score",
        "el2n",
        "--ipc",
        "3",
        "--betas",
        "0,1",
        "--width",
        "4",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "s"),
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    assert "random" in out.stdout and "best β by validation accuracy" in out.stdout
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"sweep.csv", "sweep.json", "sweep.png"}


def test_import_external_scores(experts_dir, tmp_path) -> None:
    good = tmp_path / "c.npy"
    np.save(good, np.random.default_rng(0).random(60_000))
    out = selmatch("scores", "--scores", str(experts_dir), "--import", str(good))
    assert out.returncode == 0, out.stderr
    assert "cscore" in out.stdout and "lower = harder" in out.stdout
    before = (experts_dir / "scores.safetensors").read_bytes()
    again = selmatch("scores", "--scores", str(experts_dir), "--import", str(good))
    assert again.returncode == 2 and "pass --overwrite to replace it" in again.stderr
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(10))
    out = selmatch("scores", "--scores", str(experts_dir), "--import", str(short), "--overwrite")
    assert out.returncode == 2 and "expected one score per training sample: (60000,)" in out.stderr
    assert (experts_dir / "scores.safetensors").read_bytes() == before
    replaced = selmatch(
        "scores", "--scores", str(experts_dir), "--import", str(good), "--overwrite"
    )
    assert replaced.returncode == 0, replaced.stderr


@pytest.mark.slow
def test_distill_evaluate_and_coverage_from_the_cli(experts_dir, tmp_path) -> None:
    out_dir = tmp_path / "d"
    args = [
        "distill",
        "--method",
        "selmatch",
        "--ipc",
        "4",
        "--beta",
        "1",
        "--alpha",
        "0.5",
        "--experts",
        str(experts_dir),
        "--scores",
        str(experts_dir),
        "--student-steps",
        "2",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "1",
        "--syn-batch",
        "20",
        "--iterations",
        "2",
        "--out",
        str(out_dir),
        "--no-progress",
    ]
    out = selmatch(*args)
    assert out.returncode == 0, out.stderr
    assert "40 images (20 distilled)" in out.stdout and "selmatch evaluate --set" in out.stdout
    again = selmatch(*args)
    assert again.returncode == 2 and "add --resume" in again.stderr
    evaluated = selmatch(
        "evaluate",
        "--set",
        str(out_dir),
        "--width",
        "4",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "e.json"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text())["config"]["train"]["augment"] == "combined"
    covered = selmatch(
        "coverage",
        "--set",
        str(out_dir),
        "--experts",
        str(experts_dir),
        "--scores",
        str(experts_dir),
        "--sample",
        "200",
    )
    assert covered.returncode == 0, covered.stderr
    report = json.loads((out_dir / "coverage.json").read_text())
    assert 0.0 <= report["test"] <= 1.0 and report["num_train"] == 200
    assert report["radius"] > 0


def test_distill_rejects_impossible_settings(experts_dir) -> None:
    out = selmatch(
        "distill",
        "--method",
        "mtt",
        "--ipc",
        "4",
        "--experts",
        str(experts_dir),
        "--max-start-epoch",
        "2",
        "--expert-epochs",
        "2",
    )
    assert out.returncode == 2
    assert "--max-start-epoch + --expert-epochs must be ≤ 2" in out.stderr


@pytest.mark.slow
def test_consistency_estimate_from_the_cli_feeds_a_window(experts_dir, tmp_path) -> None:
    scores = tmp_path / "scores"
    (scores).mkdir()
    for name in ("scores.safetensors", "scores.json"):  # the experts' table, to merge into
        (scores / name).write_bytes((experts_dir / name).read_bytes())
    args = (
        "scores",
        "--estimate",
        "consistency",
        "--networks",
        "4",
        "--train-fraction",
        "0.5",
        "--epochs",
        "1",
        "--width",
        "4",
        "--per-class",
        "30",
        "--scores",
        str(scores),
        "--no-progress",
    )
    out = selmatch(*args)
    assert out.returncode == 0, out.stderr
    assert "consistency: 4 x ConvNet-D3 width 4" in out.stdout and "estimated in" in out.stdout
    assert "consistency      300 scored" in out.stdout and "(lower = harder)" in out.stdout
    assert "el2n" in out.stdout  # merged into the existing table, not replacing it
    again = selmatch(*args)  # every network is there: nothing is trained again
    assert again.returncode == 0 and (scores / "network_003.safetensors").is_file()
    window = selmatch(
        "window",
        "--scores",
        str(scores),
        "--score",
        "consistency",
        "--ipc",
        "10",
        "--beta",
        "0.5",
        "--out",
        str(tmp_path / "w"),
    )
    assert window.returncode == 0, window.stderr
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["score"] == "consistency"
    bad = selmatch(
        "scores", "--estimate", "consistency", "--networks", "3", "--scores", str(scores)
    )
    assert bad.returncode == 2
    expected = "selmatch: error: --networks must be an integer in [4, 10000], got 3"
    assert bad.stderr.strip() == expected
