"""The search's summaries: the short-vs-full rank correlation is taken within each IPC."""

import pytest

from selmatch_tune.outputs import mean_rank_correlation, rank_correlations, spearman


def point(short: float, full: float) -> dict[str, float]:
    return {"short_val": short, "full_val": full, "full_test": full}


def test_rank_correlation_never_pools_points_of_different_ipcs() -> None:
    # Within each IPC the short ranking is the reverse of the full one (ρ = -1), but the larger
    # IPC's accuracies are all higher: pooling the six points would report a high ρ.
    state = {"ipcs": {
        "10": {"final": {"beta_full": {"0.3": point(0.50, 0.62), "0.4": point(0.51, 0.61),
                                       "0.5": point(0.52, 0.60)}}},
        "50": {"final": {"beta_full": {"0.2": point(0.70, 0.82), "0.3": point(0.71, 0.81),
                                       "0.4": point(0.72, 0.80)}}},
        "100": {"final": {"beta_full": {"0.2": point(0.8, 0.9)}}},
    }}  # fmt: skip
    pooled = [p for e in state["ipcs"].values() for p in e["final"]["beta_full"].values()]
    assert spearman([p["short_val"] for p in pooled], [p["full_val"] for p in pooled]) > 0.5
    by_ipc = rank_correlations(state)
    assert by_ipc["10"] == pytest.approx(-1.0)
    assert by_ipc["50"] == pytest.approx(-1.0)
    assert by_ipc["100"] is None  # one point ranks nothing
    assert mean_rank_correlation(by_ipc) == pytest.approx(-1.0)
    assert mean_rank_correlation({"100": None}) is None


def test_a_state_without_final_evaluations_has_no_correlation() -> None:
    assert rank_correlations({"ipcs": {"10": {}}}) == {"10": None}
