"""The trial-memory benchmark runs for real with --smoke (a local Ray, a narrow model), so it
cannot rot: both versions are measured in fresh processes and match the same snapshots, a count
past --before-up-to is extrapolated and marked so, and the JSON carries the new version's ratio."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from trial_memory import extrapolate, fitting_counts  # noqa: E402


def test_extrapolation_is_linear_through_the_two_largest_measured_counts() -> None:
    assert extrapolate({2: 100.0, 4: 110.0, 20: 190.0}, 100) == pytest.approx(590.0)
    assert extrapolate({2: 100.0, 20: 100.0}, 100) == pytest.approx(100.0)


def test_a_count_that_does_not_fit_is_replaced_by_the_largest_that_does() -> None:
    assert fitting_counts([2, 20, 100], 1000) == [2, 20, 100]
    assert fitting_counts([2, 20, 100], 50) == [2, 20, 50]
    assert fitting_counts([2, 20, 100], 20) == [2, 20]


@pytest.mark.slow
def test_the_smoke_run_measures_both_versions_and_marks_what_it_extrapolated(tmp_path) -> None:
    out = tmp_path / "trial_memory.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "trial_memory.py"),
            "--smoke",
            "--experts",
            "2,4,6",
            "--before-up-to",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["measured"] == {"before": [2, 4], "after": [2, 4, 6]}
    rows = {row["experts"]: row for row in data["rows"]}
    assert list(rows) == [2, 4, 6]
    measured = [
        rows[n][v] for n in (2, 4, 6) for v in ("before", "after") if (n, v) != (6, "before")
    ]
    assert len({m["pid"] for m in measured}) == len(measured)  # a fresh process per trial
    for entry in measured:
        assert not entry["extrapolated"]
        assert entry["peak_rss_mib"] >= entry["rss_start_mib"] > 0
    for n in (2, 4):  # the same draws: the same snapshots matched, the same loss
        assert rows[n]["before"]["final_loss"] == rows[n]["after"]["final_loss"]
    assert rows[6]["before"]["extrapolated"] and rows[6]["before"]["extrapolated_from"] == [2, 4]
    assert data["ratio"] == pytest.approx(
        rows[6]["after"]["peak_rss_mib"] / rows[2]["after"]["peak_rss_mib"]
    )
    assert not data["ratio_extrapolated"]
    assert "extrapolated linearly" in done.stdout
