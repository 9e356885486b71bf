"""Drive a :class:`ConcaveGridSampler` on a known curve, with P trials in flight at a time —
the same bookkeeping Ray Tune does, without Ray. Used by the tests and the search-efficiency
benchmark."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna

from selmatch_tune.flow.concave import ConcaveGridSampler, Decision, Trial


@dataclass(frozen=True)
class SimulationResult:
    trials: int
    pick: float
    evaluated: tuple[float, ...]
    max_in_flight_duplicates: int


def simulate(
    curve: Callable[[float], float],
    grid: Sequence[float],
    *,
    parallel: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    top_repeats: int = 1,
    margin: float | None = None,
    tolerance: float | None = None,
    anchors: Sequence[float] = (),
    max_trials: int = 1000,
    rounds: bool = True,
) -> SimulationResult:
    """Run the search to completion. Trials finish in random order (as real ones do). The
    repeat margin defaults to the noise level and the concavity tolerance to twice it, as a
    user would set them from the seed-to-seed std. ``rounds``: proposals in rounds of
    ``parallel`` (:meth:`ConcaveRule.decide_round`, what the search does); ``False``: each
    free slot gets the sampler's proposal at once (the search before rounds)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    sampler = ConcaveGridSampler(
        name="x",
        grid=grid,
        top_repeats=top_repeats,
        tolerance=2 * noise if tolerance is None else tolerance,
        margin=noise if margin is None else margin,
        anchors=anchors,
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distribution = optuna.distributions.CategoricalDistribution(list(grid))
    in_flight: list[tuple[optuna.Trial, int]] = []  # a trial and its place in ``trials``
    trials: list[Trial] = []  # (grid index, score or None while running), in proposal order
    round_start = 0
    evaluated: list[float] = []
    duplicates = 0
    while len(evaluated) < max_trials:
        while len(in_flight) < parallel:
            if rounds:
                decision, round_start = sampler.rule.decide_round(trials, round_start, parallel)
                sampler.planned = decision.index
            else:
                decision = Decision(sampler.status(study))
            if decision.status != "ready":
                break
            trial = study.ask({"x": distribution})
            trials.append((sampler.grid.index(float(trial.params["x"])), None))
            in_flight.append((trial, len(trials) - 1))
            values = [t.params["x"] for t, _ in in_flight]
            duplicates = max(duplicates, len(values) - len(set(values)))
        if not in_flight:
            break  # finished
        trial, place = in_flight.pop(rng.randrange(len(in_flight)))
        x = trial.params["x"]
        score = curve(x) + rng.gauss(0.0, noise)
        study.tell(trial, score)
        trials[place] = (trials[place][0], float(score))
        evaluated.append(x)
    pick = sampler.best_value(study)
    assert pick is not None
    return SimulationResult(len(evaluated), pick, tuple(evaluated), duplicates)


def random_concave_curve(grid: Sequence[float], rng: random.Random) -> Callable[[float], float]:
    """A concave curve over the grid's range with its peak anywhere in it: a downward
    quadratic or a tent, scaled to a 10-point accuracy drop across the range."""
    low, high = grid[0], grid[-1]
    peak = rng.uniform(low, high)
    width = high - low
    if rng.random() < 0.5:
        return lambda x: 0.8 - 0.10 * ((x - peak) / width) ** 2 * 4
    return lambda x: 0.8 - 0.10 * abs(x - peak) / width * 2
