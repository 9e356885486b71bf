"""The search's summaries: the short-vs-full rank correlation is taken within each IPC."""

import pytest

from selmatch_tune.results.outputs import (
    below_random,
    format_table,
    mean_rank_correlation,
    rank_correlations,
    spearman,
)
from selmatch_tune.results.record import SearchRecord


def point(short: float, full: float) -> dict[str, float]:
    return {"short_val": short, "full_val": full, "full_test": full}


def test_rank_correlation_never_pools_points_of_different_ipcs() -> None:
    # Within each IPC the short ranking is the reverse of the full one (ρ = -1), but the larger
    # IPC's accuracies are all higher: pooling the six points would report a high ρ.
    state = {
        "ipcs": {
            "10": {
                "final": {
                    "beta_full": {
                        "0.3": point(0.50, 0.62),
                        "0.4": point(0.51, 0.61),
                        "0.5": point(0.52, 0.60),
                    }
                }
            },
            "50": {
                "final": {
                    "beta_full": {
                        "0.2": point(0.70, 0.82),
                        "0.3": point(0.71, 0.81),
                        "0.4": point(0.72, 0.80),
                    }
                }
            },
            "100": {"final": {"beta_full": {"0.2": point(0.8, 0.9)}}},
        }
    }
    pooled = [p for e in state["ipcs"].values() for p in e["final"]["beta_full"].values()]
    assert spearman([p["short_val"] for p in pooled], [p["full_val"] for p in pooled]) > 0.5
    record = SearchRecord.from_dict(
        {
            "config": {},
            "ipcs": {
                ipc: {
                    "final": {
                        "test_mean": 0.0,
                        "test_std": 0.0,
                        "val_mean": 0.0,
                        "seeds": [0],
                        "epochs": 1,
                    }
                    | entry["final"]
                }
                for ipc, entry in state["ipcs"].items()
            },
        }
    )
    by_ipc = rank_correlations(record)
    assert by_ipc[10] == pytest.approx(-1.0)
    assert by_ipc[50] == pytest.approx(-1.0)
    assert by_ipc[100] is None  # one point ranks nothing
    assert mean_rank_correlation(by_ipc) == pytest.approx(-1.0)
    assert mean_rank_correlation({100: None}) is None


def test_a_state_without_final_evaluations_has_no_correlation() -> None:
    record = SearchRecord.from_dict({"config": {}, "ipcs": {"10": {}}})
    assert rank_correlations(record) == {10: None}


def row(ipc: int, final: float, random: float | str) -> dict[str, object]:
    return {
        "ipc": ipc,
        "init": "window",
        "beta": 0.4,
        "alpha": 0.2,
        "short_val_accuracy": 0.7,
        "final_test_mean": final,
        "final_test_std": 0.001,
        "random_test_mean": random,
        "random_test_std": 0.002 if random != "" else "",
        "beta_trials": 5,
        "beta_grid_size": 5,
        "alpha_trials": 4,
        "alpha_grid_size": 2,
    }


def test_a_winner_below_the_random_subset_is_warned_about() -> None:
    # plan v2 at IPC 600: the searched set 79.53 %, a random subset 87.56 %
    rows = [row(60, 0.8117, 0.8030), row(600, 0.7953, 0.8756), row(1200, 0.81, "")]
    warnings = below_random(rows)
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "WARNING: IPC 600: the searched set (79.53 % test) scores "
        "below a random subset of the same size (87.56 %)"
    )
    table = format_table(rows).splitlines()
    assert "random test %" in table[0]
    assert "87.56 ± 0.20" in table[2]
    assert table[3].split()[9] == "–"  # not evaluated (--no-random-reference)
    # IPC, method, init, β, α
    assert table[2].split()[:5] == ["600", "selmatch", "window", "0.4", "0.2"]
    assert "beat or tied that subset on validation" in warnings[0]
    # SeqMatch searched alone: no α phase, so the random subset was no candidate
    alone = row(600, 0.7953, 0.8756) | {
        "alpha_trials": 0,
        "alpha_grid_size": 0,
        "method": "seqmatch",
        "subsets": 2,
    }
    (warning,) = below_random([alone])
    assert "no candidate of this search (--method seqmatch" in warning
    assert "seqmatch K=2" in format_table([alone]).splitlines()[1]
