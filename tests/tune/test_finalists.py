"""The decision at the target budget, in its pure parts: the tie margin of two finalists over
common seeds, the candidates' labels, the record's round trip and the log line."""

from __future__ import annotations

import math

import pytest

from selmatch_tune.flow.finals import decision_line, tie_margin
from selmatch_tune.results.record import (
    Candidate,
    Finalist,
    FinalResult,
    IpcRecord,
    PhaseResult,
    Point,
    Score,
    Winner,
)
from selmatch_tune.settings.presets import smoke


def test_the_tie_margin_is_two_standard_errors_of_the_paired_difference() -> None:
    a, b = [0.80, 0.82, 0.81], [0.79, 0.80, 0.81]  # differences 0.01, 0.02, 0.00
    assert tie_margin(a, b) == pytest.approx(2 * 0.01 / math.sqrt(3))
    # the same seed's noise cancels: a constant gap is no tie however noisy each one is
    assert tie_margin([0.5, 0.9, 0.7], [0.4, 0.8, 0.6]) == pytest.approx(0.0, abs=1e-12)
    assert tie_margin([0.8], [0.7]) == math.inf  # one seed: no spread measured


@pytest.mark.parametrize(
    ("winner", "label"),
    [
        (Winner(init="random", alpha=0.0, candidate="alpha"), "the random subset"),
        (Winner(init="window", alpha=0.0, candidate="alpha"), "the window β=0.3"),
        (Winner(init="window", alpha=0.5, candidate="alpha"), "SelMatch α=0.5"),
        (
            Winner(init="random", alpha=0.25, candidate="alpha"),
            "SelMatch α=0.25 from the random subset",
        ),
        (Winner(init="random", alpha=1.0, candidate="mtt"), "plain MTT"),
        (Winner(init="random", alpha=1.0, candidate="seqmatch", subsets=2), "SeqMatch K=2"),
        (
            Winner(init="window", alpha=0.5, candidate="alpha", refined={"max_start_epoch": 6}),
            "SelMatch α=0.5 T+=6",
        ),
    ],
)
def test_every_candidate_has_a_label_in_words(winner: Winner, label: str) -> None:
    assert winner.label(0.3) == label


def test_the_winner_s_short_scores_are_its_candidate_s() -> None:
    point = Point(val=0.7, test=0.6, n=1)
    entry = IpcRecord(
        beta=PhaseResult(curve={0.3: point}, best=0.3, trials=1, failed=0),
        winner=Winner(init="random", alpha=0.0, candidate="alpha"),
        candidates={
            "the random subset": Candidate(
                winner=Winner(init="random", alpha=0.0, candidate="alpha"),
                short=Score(val=0.65, test=0.64),
            )
        },
    )
    assert entry.winner_scores() == Score(val=0.65, test=0.64)
    assert IpcRecord.from_dict(entry.to_dict()) == entry


def test_the_decision_is_said_in_one_line() -> None:
    def finalist(short: float, val: float) -> Finalist:
        return Finalist(
            short_val=short, val_mean=val, test_mean=val, test_std=0.0, val=(val,), seeds=(0, 1)
        )

    final = FinalResult(
        test_mean=0.8,
        test_std=0.0,
        val_mean=0.8,
        seeds=(0, 1),
        epochs=10,
        finalists={
            "the random subset": finalist(0.70, 0.78),
            "SelMatch α=0.5": finalist(0.72, 0.80),
            "plain MTT": finalist(0.71, 0.79),
        },
        fidelity_rank_correlation=1.0,
        tie_margin=0.004,
        tie_repeated=True,
    )
    line = decision_line(smoke(), final, "SelMatch α=0.5")
    assert "the winner is SelMatch α=0.5: val 80.00 % vs plain MTT 79.00 %" in line
    assert "(tie margin 0.40 points, seeds added)" in line and "ρ = 1.00" in line
    assert "2 seeds, 3 finalists" in line
    assert FinalResult.from_dict(final.to_dict()) == final


def test_the_monotone_bound_caps_only_a_best_separated_by_more_than_the_noise() -> None:
    from selmatch_tune.flow.phases import monotone_bound

    def phase(curve: dict[float, float], noise: float = 0.0) -> PhaseResult:
        points = {v: Point(val=val, test=val, n=1) for v, val in curve.items()}
        best = max(points, key=lambda v: points[v].val)
        return PhaseResult(curve=points, best=best, trials=len(points), failed=0, noise=noise)

    clear = phase({0.0: 0.70, 0.25: 0.74, 0.5: 0.72})
    assert monotone_bound(clear, 0.005)[0] == 0.25
    close = phase({0.0: 0.735, 0.25: 0.74, 0.5: 0.738})
    bound, why = monotone_bound(close, 0.005)
    assert bound is None and "0.5 was within the noise (0.50 points)" in why
    # the noise measured between repeats widens the margin beyond the one assumed
    assert monotone_bound(phase({0.25: 0.74, 0.5: 0.72}, noise=0.03), 0.005)[0] is None
    assert monotone_bound(None, 0.005) == (None, "")


def test_the_noise_measured_at_an_ipc_includes_the_baselines_repeats() -> None:
    """The random subset's repeats in the β phase measure the short budget's seed noise; the
    α phase's tie margin and the next IPC's bound use it (the demo's IPC 10: 72.50 and 69.08 %
    for the same subset, seven times the assumed 0.5 points)."""
    from selmatch_tune.flow.phases import monotone_bound
    from selmatch_tune.results.record import Baseline

    point = Point(val=0.735, test=0.72, n=1)
    beta = PhaseResult(curve={0.6: point}, best=0.6, trials=1, failed=0, noise=0.0)
    beta.random = Baseline(val=0.708, test=0.70, n=2, noise=0.0242)
    alpha = PhaseResult(
        curve={0.0: point, 0.75: Point(val=0.7175, test=0.70, n=1)},
        best=0.0,
        trials=2,
        failed=0,
        noise=0.0,
    )
    entry = IpcRecord(beta=beta, alpha=alpha)
    assert entry.measured_noise() == pytest.approx(0.0242)
    assert IpcRecord().measured_noise() == 0.0
    # 1.75 points behind the best is clear of the assumed 0.5, not of the measured 2.42
    assert monotone_bound(alpha, 0.005)[0] == 0.0
    assert monotone_bound(alpha, 0.005, entry.measured_noise())[0] is None
