"""Contract tests of the concave-aware grid sampler, driven like Ray Tune drives it."""

import pickle
import random
import statistics
from typing import Any

import optuna
import pytest

from selmatch_tune.flow.concave import ConcaveGridSampler, ConcaveRule, Decision
from selmatch_tune.flow.simulate import random_concave_curve, simulate


def grid(n: int) -> list[float]:
    return [round(i / (n - 1), 6) for i in range(n)]


def within_one_step(pick: float, curve, values: list[float]) -> bool:
    best = max(values, key=curve)
    return abs(values.index(pick) - values.index(best)) <= 1


def test_first_point_is_mid_range_and_parallel_points_split_the_grid() -> None:
    sampler = ConcaveGridSampler(name="x", grid=grid(11))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(grid(11))
    first = study.ask({"x": dist})
    assert first.params["x"] == 0.5
    second, third = study.ask({"x": dist}), study.ask({"x": dist})
    assert {second.params["x"], third.params["x"]} == {0.2, 0.8}  # symmetric around 0.5


@pytest.mark.parametrize("parallel", [1, 2, 4])
def test_exact_concave_curves_find_the_grid_optimum(parallel) -> None:
    values = grid(21)
    for peak in values:
        result = simulate(lambda x, p=peak: -abs(x - p), values, parallel=parallel, top_repeats=0)
        assert result.pick == peak
        assert result.max_in_flight_duplicates == 0
        assert result.trials <= 12 + parallel


@pytest.mark.parametrize(("size", "parallel"), [(20, 1), (20, 2), (40, 2), (40, 4)])
def test_noisy_concave_curves_use_well_under_half_the_grid(size, parallel) -> None:
    rng = random.Random(size * 10 + parallel)
    values = grid(size)
    hits, counts = 0, []
    runs = 60
    for seed in range(runs):
        curve = random_concave_curve(values, rng)
        # noise: std 0.05 points of accuracy on a curve that spans 10 points
        result = simulate(curve, values, parallel=parallel, noise=0.0005, seed=seed)
        counts.append(result.trials)
        hits += within_one_step(result.pick, curve, values)
    assert hits >= 0.9 * runs, hits
    assert statistics.mean(counts) <= 0.4 * size, statistics.mean(counts)


def test_no_duplicate_proposals_among_concurrent_trials() -> None:
    values = grid(30)
    for seed in range(20):
        curve = random_concave_curve(values, random.Random(seed))
        result = simulate(curve, values, parallel=5, noise=0.0005, seed=seed, top_repeats=0)
        assert result.max_in_flight_duplicates == 0


def test_contradicted_concavity_falls_back_to_covering_the_grid() -> None:
    values = grid(12)
    # the first round (the middle and the quartiles) already shows the valley
    result = simulate(lambda x: abs(x - 0.5) + 0.1 * x, values, parallel=3, top_repeats=0)
    assert sorted(set(result.evaluated)) == values  # a valley in the middle: cover everything
    assert result.pick == 1.0


def test_sampler_survives_pickling_mid_search() -> None:
    values = grid(15)
    sampler = ConcaveGridSampler(name="x", grid=values, top_repeats=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(values)
    for _ in range(3):
        trial = study.ask({"x": dist})
        study.tell(trial, -abs(trial.params["x"] - 0.3))
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy.next_index(study) == sampler.next_index(study)
    assert copy.status(study) == sampler.status(study) == "ready"


def test_failed_trials_are_never_best_and_are_retried() -> None:
    values = grid(9)
    sampler = ConcaveGridSampler(name="x", grid=values, top_repeats=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(values)
    trial = study.ask({"x": dist})
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert sampler.best_value(study) is None
    again = study.ask({"x": dist})
    assert again.params["x"] == trial.params["x"]  # the failed point is proposed again


def test_minimisation_is_respected() -> None:
    values = grid(11)
    sampler = ConcaveGridSampler(name="x", grid=values, top_repeats=0)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(values)
    while sampler.status(study) == "ready":
        trial = study.ask({"x": dist})
        study.tell(trial, abs(trial.params["x"] - 0.8))
    assert sampler.best_value(study) == 0.8


@pytest.mark.parametrize("bad", [[], [0.2, 0.1], [0.1, 0.1]])
def test_bad_grids_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="grid"):
        ConcaveGridSampler(name="x", grid=bad)


def test_a_repeated_point_is_a_new_draw_of_the_noise() -> None:
    """Through Tune's searcher API: the k-th trial at a grid value carries ``repeat = k``, so
    the trial trains with other seeds instead of recomputing the same number."""
    from ray import tune
    from ray.tune.search import Searcher

    from selmatch_tune.flow.searcher import ConcaveSearch

    values = grid(11)
    sampler = ConcaveGridSampler(
        name="beta", grid=values, top_repeats=2, margin=0.05, tolerance=0.1
    )
    search = ConcaveSearch(sampler, metric="val_accuracy", mode="max")
    search.set_search_properties("val_accuracy", "max", {"beta": tune.choice(values)})
    seen: dict[float, list[int]] = {}
    for number in range(40):
        config = search.suggest(f"t{number}")
        if config == Searcher.FINISHED:
            break
        assert isinstance(config, dict)
        beta = config["beta"]
        seen.setdefault(beta, []).append(config["repeat"])
        score = 0.8 - 0.01 * abs(beta - 0.45)  # a flat top: 0.4 and 0.5 are within the margin
        search.on_trial_complete(f"t{number}", {"val_accuracy": score})
    assert all(repeats == list(range(len(repeats))) for repeats in seen.values()), seen
    assert max(len(r) for r in seen.values()) > 1  # the close top was re-evaluated


@pytest.mark.parametrize("parallel", [1, 2])
def test_anchors_are_evaluated_first_and_the_answer_is_never_below_them(parallel) -> None:
    values = grid(11)
    rng = random.Random(5)
    for seed in range(30):
        curve = random_concave_curve(values, rng)
        # a curve whose interior peak is lower than one end: the search must still answer
        # with that end (the α search's 0 and 1: selection only, every image learned)
        end = values[0] if seed % 2 else values[-1]
        shifted = lambda x, c=curve, e=end: c(x) + (1.0 if x == e else 0.0)  # noqa: E731
        result = simulate(
            shifted, values, parallel=parallel, anchors=(0.0, 1.0), seed=seed, top_repeats=0
        )
        assert {0.0, 1.0} <= set(result.evaluated)
        assert result.pick == end
    sampler = ConcaveGridSampler(name="x", grid=values, anchors=(0.0, 1.0))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(values)
    assert {study.ask({"x": dist}).params["x"] for _ in range(2)} == {0.0, 1.0}  # asked first
    with pytest.raises(ValueError, match="anchors must be values of the grid"):
        ConcaveGridSampler(name="x", grid=values, anchors=(0.05,))


@pytest.mark.parametrize("parallel", [1, 2])
def test_anchors_stand_outside_the_unimodal_model(parallel) -> None:
    # a curve whose end is far off the interior's concave shape (α = 0: no distillation at
    # all) must not read as a contradicted concavity and send the search over the whole grid
    values = grid(11)
    for peak in values[2:-2]:
        curve = lambda x, p=peak: 10.0 if x == 0.0 else -abs(x - p)  # noqa: E731
        result = simulate(curve, values, parallel=parallel, anchors=(0.0, 1.0), top_repeats=0)
        assert result.pick == 0.0
        assert result.trials <= 8 + parallel, result.evaluated  # not all 11 points
        assert result.max_in_flight_duplicates == 0


def test_the_rule_is_a_pure_function_of_scores_and_running() -> None:
    from selmatch_tune.flow.concave import ConcaveRule, Decision

    rule = ConcaveRule(size=11, top_repeats=0)
    assert rule.decide({}, {}) == Decision("ready", 5)  # the middle of the grid first
    assert rule.decide({}, {5: 1}) == Decision("ready", 2)  # then the quartiles
    assert rule.decide({}, {5: 1, 2: 1, 7: 1, 8: 1, 1: 1, 3: 1, 4: 1, 6: 1, 9: 1}).status in (
        "ready",
        "wait",
    )
    peak = {i: [-abs(i - 4.0)] for i in (3, 4, 5)}  # a closed bracket around 4
    assert rule.decide(peak, {}) == Decision("finished")
    assert rule.decide(peak, {}) == rule.decide(dict(peak), {})  # nothing remembered
    assert rule.best_index(peak) == 4


def drive_like_tune(order_seed: int) -> tuple[list[float], Any, ConcaveGridSampler]:
    """A ConcaveSearch driven as Tune drives it: 3 trials in flight, finishing in an order
    drawn from ``order_seed``, trial t2 crashing; its proposals in order, itself, its sampler."""
    from ray import tune
    from ray.tune.search import Searcher

    from selmatch_tune.flow.searcher import ConcaveSearch

    values = grid(15)
    sampler = ConcaveGridSampler(
        name="beta", grid=values, top_repeats=1, margin=0.01, tolerance=0.02
    )
    search = ConcaveSearch(sampler, metric="val_accuracy", mode="max", parallel=3)
    search.set_search_properties("val_accuracy", "max", {"beta": tune.choice(values)})
    rng = random.Random(order_seed)
    in_flight: list[str] = []
    proposed: list[float] = []
    number, finished = 0, False
    while not finished and number < 60:
        while len(in_flight) < 3:
            decision = search.decision()
            config = search.suggest(f"t{number}")
            if config is None or config == Searcher.FINISHED:
                finished = config == Searcher.FINISHED and not in_flight
                break
            assert config["beta"] == values[decision.index]  # Optuna proposed the decision
            proposed.append(config["beta"])
            in_flight.append(f"t{number}")
            number += 1
        if not in_flight:
            break
        trial_id = in_flight.pop(rng.randrange(len(in_flight)))
        beta = search.values[trial_id]
        if trial_id == "t2":
            search.on_trial_complete(trial_id, None, error=True)  # a crashed trial
        else:
            search.on_trial_complete(trial_id, {"val_accuracy": 0.8 - abs(beta - 0.3)})
        old = pickle.loads(pickle.dumps(search))
        del old.values, old.scores, old.failed  # as a version before the record pickled it
        old._migrate()
        assert (old.values, old.scores, old.failed) == (search.values, search.scores, search.failed)
    return proposed, search, sampler


def test_the_tune_searcher_proposes_the_same_points_whatever_order_trials_finish_in() -> None:
    """Driven like Tune (trials in flight, finishing out of order, one failing), the searcher
    proposes in rounds decided from its own record, so its path is the same for every
    completion order; Optuna's sampler proposes the point decided; a searcher pickled without
    that record (an older version) rebuilds it; the search finishes at the curve's peak."""
    paths = []
    for order_seed in range(4):
        proposed, search, sampler = drive_like_tune(order_seed)
        paths.append(proposed)
        assert "t2" in search.failed
        assert search.decision().status == "finished"
        values = grid(15)
        assert sampler.best_value(search._ot_study) == min(values, key=lambda v: abs(v - 0.3))
    assert all(path == paths[0] for path in paths), paths


def test_rounds_wait_for_the_slowest_trial_and_then_see_every_score() -> None:
    """Within a round a decision sees the earlier rounds' scores only; the next round begins
    when every trial of the current one has ended."""
    rule = ConcaveRule(size=9)
    first, start = rule.decide_round([], 0, 2)
    assert first.status == "ready" and start == 0
    second, start = rule.decide_round([(first.index, None)], start, 2)
    assert second.status == "ready" and second.index != first.index
    trials = [(first.index, 0.7), (second.index, None)]  # one finished, one still running
    assert rule.decide_round(trials, start, 2) == (Decision("wait"), 0)
    trials[1] = (second.index, 0.6)
    decision, start = rule.decide_round(trials, start, 2)
    assert decision.status == "ready" and start == 2  # a new round, from both scores
    assert decision == rule.decide({first.index: [0.7], second.index: [0.6]}, {})


def test_a_tie_is_judged_by_the_noise_measured_in_the_phase() -> None:
    """With no noise assumed (margin 0), two neighbouring tops 3 points apart are told apart
    when their repeats agree, and re-evaluated when the repeats spread by more than that."""
    from selmatch_tune.flow.concave import ConcaveRule, measured_noise

    rule = ConcaveRule(size=3, top_repeats=2, margin=0.0)
    agree = {0: [0.50], 1: [0.70, 0.70], 2: [0.67, 0.67]}
    spread = {0: [0.50], 1: [0.75, 0.65], 2: [0.66, 0.68]}
    assert measured_noise(agree.values()) == 0.0
    assert measured_noise(spread.values()) == pytest.approx(((0.005 + 0.0002) / 2) ** 0.5)
    assert rule.decide(agree, {}).status == "finished"
    decision = rule.decide(spread, {})
    assert decision.status == "ready" and decision.index in (1, 2)
