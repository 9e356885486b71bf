"""A concave-aware 1-D grid search, as an Optuna sampler.

SelMatch's Appendix E observes that accuracy is a concave (unimodal) function of the window
start β and of the distilled share α: start mid-range, move toward improvement, stop when the
maximum is bracketed. :class:`ConcaveGridSampler` does that on a grid of values of one
parameter, with these rules. They are :class:`ConcaveRule`, a pure function of the grid's size,
the scores so far and the trials running (:meth:`ConcaveRule.decide`), so the same decision
is made wherever the trials are counted: by :class:`ConcaveGridSampler`, a thin Optuna sampler
that counts them in its study (public API), and by Ray Tune's searcher
(:class:`selmatch_tune.flow.searcher.ConcaveSearch`), which counts the trials it was told about.
Neither holds hidden state, so both survive pickling and ``Tuner.restore``:

1. **Bracket and model.** Let ``b`` be the evaluated grid point with the best mean score, ``l``
   / ``r`` the nearest evaluated points left / right of it (or the grid ends). Under
   unimodality the maximum lies in ``(l, r)``. A concave quadratic is fitted (least squares)
   to the evaluated points around the bracket; its argmax, rounded to the grid and clipped into
   the bracket, is the next point, followed by its neighbours (which closing the bracket needs
   anyway). When there is no concave fit yet, the bracket is bisected (the larger side
   first). Before anything is known, the first point is the middle of the grid and the next
   ones are the quartiles — enough for a first fit.
2. **Parallelism.** With P trials running at once, each new trial gets the most useful point not
   already evaluated or running: the P points of a round split the bracket P ways. When every
   useful point is already running, :meth:`status` says ``"wait"`` (the search asks again later)
   rather than proposing a duplicate. Ray Tune's searcher proposes in rounds
   (:meth:`ConcaveRule.decide_round`): a round's P points are decided from the earlier rounds'
   scores, so the path does not depend on the order in which trials finish.
3. **Noise.** When the bracket is one grid step wide (both neighbours of ``b`` evaluated, or at a
   grid end) but ``b`` beats its better neighbour by less than the noise (``margin``, the
   noise of one evaluation assumed, or the noise measured so far in the phase, the pooled
   spread of its repeats, whichever is larger: :meth:`ConcaveRule.noise`), both are
   re-evaluated, up to ``top_repeats`` more times each; scores are averaged, and if the
   neighbour overtakes ``b`` the bracket reopens around it.
4. **Contradicted concavity.** If the evaluated means have a valley — a point lower than an
   evaluated point on each side by more than ``tolerance`` — the data contradict unimodality and
   the sampler falls back to covering the rest of the grid, coarse to fine (largest gaps first).
5. **Anchors.** Grid values given as ``anchors`` (the α search's 0 and 1: selection only, every
   image learned) are evaluated first, whatever the bracket says, so the search's answer —
   the best of every evaluated point — is never worse on validation than they are. They stand
   outside the unimodal model: the bracket, the fit and the valley test use the other points
   (α = 0 is a different protocol, no distillation, and need not continue the curve).
6. **Done.** ``status`` is ``"finished"`` once the bracket is one step wide with its repeats done,
   or the grid is covered; :func:`best_value` is then the grid point with the best mean.

Failed or pruned trials carry no score: their grid point counts as unevaluated again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

#: Scores per grid index (signed so that higher is better), and trials running per grid index.
Scores = Mapping[int, Sequence[float]]
Running = Mapping[int, int]
#: A trial in suggestion order: its grid index and its score, ``None`` while it runs, or
#: ``FAILED``.
FAILED = "failed"
Trial = tuple[int, "float | str | None"]


def measured_noise(repeats: Iterable[Sequence[float]]) -> float:
    """The pooled standard deviation of repeated scores of the same point (each list: one
    point's scores); 0 while no point has two."""
    variances = [float(np.var(v, ddof=1)) for v in repeats if len(v) >= 2]
    return math.sqrt(sum(variances) / len(variances)) if variances else 0.0


def _scores_of(trials: Sequence[Trial]) -> dict[int, list[float]]:
    """The scores of the finished trials, per grid index."""
    scores: dict[int, list[float]] = defaultdict(list)
    for index, state in trials:
        if isinstance(state, float):
            scores[index].append(state)
    return scores


@dataclass(frozen=True)
class Decision:
    """What the search does next: ``"ready"`` with the grid index to evaluate, ``"wait"`` (every
    useful point is running: ask again when a trial ends) or ``"finished"``."""

    status: str
    index: int | None = None


@dataclass(frozen=True)
class ConcaveRule:
    """The rules of the module docstring over a grid of ``size`` points (indices 0 … size−1);
    every method is a pure function of its arguments."""

    size: int
    top_repeats: int = 1
    margin: float = 0.0
    tolerance: float = 0.0
    anchors: tuple[int, ...] = ()

    def decide(self, scores: Scores, running: Running) -> Decision:
        """The next step given the ``scores`` so far and the trials ``running``."""
        wanted = self.wanted(scores)
        if not wanted:
            return Decision("finished")
        model = self.model(scores)
        for index in wanted:
            if self._free(index, model, running):
                return Decision("ready", index)
        return Decision("wait")

    def decide_round(
        self, trials: Sequence[Trial], round_start: int, parallel: int
    ) -> tuple[Decision, int]:
        """The next step in *rounds* of up to ``parallel`` trials, and where the current round
        starts in ``trials`` (suggestion order). Within a round a decision sees the scores of
        the earlier rounds and this round's trials as running, whether they have finished or
        not; a new round begins once every trial of the current one has ended. So the points
        proposed depend on the scores alone, never on the order in which trials finish, and a
        search with deterministic trials is reproducible whatever the timing (a trial slot
        may idle at the end of a round until its slowest trial ends)."""
        ended = all(state is not None for _, state in trials[round_start:])
        proposed = len(trials) - round_start
        if 0 < proposed < parallel:
            before = _scores_of(trials[:round_start])
            in_round: dict[int, int] = defaultdict(int)
            for index, state in trials[round_start:]:
                if state != FAILED:
                    in_round[index] += 1
            decision = self.decide(before, in_round)
            if decision.status == "ready" or not ended:
                return (decision if decision.status == "ready" else Decision("wait")), round_start
        elif proposed and not ended:
            return Decision("wait"), round_start
        return self.decide(_scores_of(trials), {}), len(trials)

    def noise(self, scores: Scores) -> float:
        """The margin within which two points count as tied: ``margin`` (the noise assumed),
        or the noise measured in this phase, the pooled standard deviation of the repeats of
        one point (:func:`measured_noise`), whichever is larger."""
        return max(self.margin, measured_noise(scores.values()))

    def model(self, scores: Scores) -> dict[int, Sequence[float]]:
        """The scores the unimodal model sees: all but the anchors'."""
        return {i: v for i, v in scores.items() if i not in self.anchors}

    def best_index(self, scores: Scores) -> int | None:
        """The grid index with the best mean score (``None`` before any score). Ties go to the
        point nearer the middle of the grid, then the lower index."""
        if not scores:
            return None
        middle = (self.size - 1) / 2
        return max(scores, key=lambda i: (_mean(scores[i]), -abs(i - middle), -i))

    def wanted(self, scores: Scores) -> list[int]:
        """Grid indices that still need a score, most useful first."""
        if not self.anchors:
            return self._unanchored(scores)
        first = [i for i in sorted(self.anchors) if i not in scores]
        return first + [i for i in self._unanchored(self.model(scores)) if i not in self.anchors]

    def _free(self, index: int, scores: Scores, running: Running) -> bool:
        """A point is free if it needs more scores than it has plus those on their way."""
        have = len(scores.get(index, [])) + running.get(index, 0)
        return have < self._needed(index, scores)

    def _needed(self, index: int, scores: Scores) -> int:
        return 1 + self.top_repeats if index in self._ambiguous_top(scores) else 1

    def _ambiguous_top(self, scores: Scores) -> list[int]:
        """The best point and its better neighbour, if the bracket is closed and they are
        closer than ``margin``; otherwise nothing."""
        best = self.best_index(scores)
        if best is None or not self._closed(scores):
            return []
        neighbours = [i for i in (best - 1, best + 1) if i in scores]
        if not neighbours:
            return []
        runner_up = max(neighbours, key=lambda i: _mean(scores[i]))
        if _mean(scores[best]) - _mean(scores[runner_up]) >= self.noise(scores):
            return []
        return [best, runner_up]

    def _unanchored(self, scores: Scores) -> list[int]:
        if not scores:
            return _split(-1, self.size)
        if self._contradicts_concavity(scores):
            return self._cover_order(scores)
        best = self.best_index(scores)
        assert best is not None
        if self._closed(scores):
            top = self._ambiguous_top(scores)
            return [i for i in top if len(scores[i]) < 1 + self.top_repeats]
        left, right = self._neighbours(best, scores)
        order: list[int] = []
        guess = _model_argmax(scores, left, right)
        if guess is not None:
            order += [guess, guess - 1, guess + 1]
        halves = sorted([(left, best), (best, right)], key=lambda h: h[1] - h[0], reverse=True)
        for low, high in halves:
            order += _split(low, high)
        seen: set[int] = set()
        inside = [i for i in order if left < i < right and i not in scores]
        return [i for i in inside if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]

    def _closed(self, scores: Scores) -> bool:
        best = self.best_index(scores)
        if best is None:
            return False
        left, right = self._neighbours(best, scores)
        return left == best - 1 and right == best + 1

    def _neighbours(self, best: int, scores: Scores) -> tuple[int, int]:
        left = max((i for i in scores if i < best), default=-1)
        right = min((i for i in scores if i > best), default=self.size)
        return left, right

    def _cover_order(self, scores: Scores) -> list[int]:
        known = sorted(scores)
        order: list[int] = []
        for low, high in zip([-1, *known], [*known, self.size], strict=True):
            order += _split(low, high)
        gaps = {i: min((abs(i - k) for k in known), default=0) for i in order}
        return sorted(order, key=lambda i: -gaps[i])

    def _contradicts_concavity(self, scores: Scores) -> bool:
        means = [_mean(scores[i]) for i in sorted(scores)]
        for j in range(1, len(means) - 1):
            valley = max(means[:j]) - self.tolerance, max(means[j + 1 :]) - self.tolerance
            if means[j] < min(valley):
                return True
        return False


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _split(low: int, high: int) -> list[int]:
    """Indices strictly between ``low`` and ``high``, in bisection order (middle first, then
    the middles of the halves, ...)."""
    order: list[int] = []
    queue = [(low, high)]
    while queue:
        queue.sort(key=lambda pair: pair[1] - pair[0], reverse=True)
        a, b = queue.pop(0)
        if b - a < 2:
            continue
        middle = (a + b) // 2
        order.append(middle)
        queue += [(a, middle), (middle, b)]
    return order


def _model_argmax(scores: Scores, left: int, right: int) -> int | None:
    """Argmax of a concave quadratic fitted to the points in [left, right] (at least the three
    nearest to the bracket), rounded and clipped into (left, right)."""
    points = sorted(scores)
    local = [i for i in points if left <= i <= right]
    if len(local) < 3:
        middle = (left + right) / 2
        local = sorted(points, key=lambda i: abs(i - middle))[:3]
    if len(set(local)) < 3:
        return None
    xs = np.array(local, dtype=float)
    ys = np.array([_mean(scores[i]) for i in local])
    a, b, _ = np.polyfit(xs, ys, 2)
    if not a < 0:
        return None
    guess = int(np.rint(-b / (2 * a)))
    return min(max(guess, left + 1), right - 1)


def grid_index(grid: Sequence[float], value: float) -> int | None:
    """The index of ``value`` in ``grid`` (``None`` if it is not a grid value)."""
    distances = [abs(float(value) - g) for g in grid]
    index = distances.index(min(distances))
    return index if distances[index] <= 1e-9 * max(1.0, abs(float(value))) else None


class ConcaveGridSampler(BaseSampler):
    """:class:`ConcaveRule` over ``grid`` for the parameter ``name``, as an Optuna sampler: it
    counts the scores and the running trials in the study (``Study.get_trials``) and asks the
    rule. Other parameters of a trial (if any) are sampled by ``fallback`` (default: random).
    The study's direction (maximise / minimise) is respected."""

    def __init__(
        self,
        *,
        name: str,
        grid: Sequence[float],
        top_repeats: int = 1,
        margin: float = 0.0,
        tolerance: float = 0.0,
        anchors: Sequence[float] = (),
        fallback: BaseSampler | None = None,
    ) -> None:
        values = [float(v) for v in grid]
        if len(values) < 1 or len(set(values)) != len(values) or values != sorted(values):
            raise ValueError("grid must be distinct values in increasing order")
        if any(float(a) not in values for a in anchors):
            raise ValueError("anchors must be values of the grid")
        if top_repeats < 0 or tolerance < 0 or margin < 0:
            raise ValueError("top_repeats, margin and tolerance must be ≥ 0")
        self.name = name
        self.grid = values
        self.top_repeats = top_repeats
        self.margin = margin
        self.tolerance = tolerance
        self.anchors = tuple(values.index(float(a)) for a in anchors)
        self.fallback = fallback or optuna.samplers.RandomSampler(seed=0)

    @property
    def rule(self) -> ConcaveRule:
        # built from the attributes (getattr: a sampler pickled before anchors has none)
        return ConcaveRule(
            len(self.grid),
            self.top_repeats,
            self.margin,
            self.tolerance,
            tuple(getattr(self, "anchors", ())),
        )

    # ------------------------------------------------------------------ Optuna API
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name != self.name:
            return self.fallback.sample_independent(study, trial, param_name, param_distribution)
        index = getattr(self, "planned", None)
        self.planned: int | None = None
        if index is None:
            index = self.next_index(study, exclude=trial.number)
        if index is None:  # nothing useful is left: repeat the best (harmless, and noise-reducing)
            index = self.rule.best_index(self._scores(study)) or 0
        return self._as_choice(self.grid[index], param_distribution)

    # ------------------------------------------------------------------ the search
    def status(self, study: optuna.Study) -> str:
        """``"ready"`` (a useful point is free), ``"wait"`` (all useful points are running)
        or ``"finished"``."""
        return self.rule.decide(self._scores(study), self._running(study, exclude=None)).status

    def next_index(self, study: optuna.Study, *, exclude: int | None = None) -> int | None:
        """The grid index the next trial should evaluate (``None`` if none is useful now)."""
        return self.rule.decide(self._scores(study), self._running(study, exclude=exclude)).index

    def best_value(self, study: optuna.Study) -> float | None:
        """The grid value with the best mean score so far (``None`` before any score)."""
        index = self.rule.best_index(self._scores(study))
        return None if index is None else self.grid[index]

    def curve(self, study: optuna.Study) -> dict[float, tuple[float, int]]:
        """Grid value → (mean score, number of scores), for evaluated points."""
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        scores = self._scores(study)
        return {self.grid[i]: (sign * _mean(v), len(v)) for i, v in sorted(scores.items())}

    # ------------------------------------------------------------------ trial bookkeeping
    def _scores(self, study: optuna.Study) -> dict[int, list[float]]:
        """Scores per grid index, signed so that higher is better whatever the direction."""
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        scores: dict[int, list[float]] = defaultdict(list)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            index = self._index_of(trial)
            if index is not None and trial.value is not None and math.isfinite(trial.value):
                scores[index].append(sign * float(trial.value))
        return dict(scores)

    def _running(self, study: optuna.Study, *, exclude: int | None) -> dict[int, int]:
        running: dict[int, int] = defaultdict(int)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            index = self._index_of(trial)
            if index is not None and trial.number != exclude:
                running[index] += 1
        return dict(running)

    def _index_of(self, trial: FrozenTrial) -> int | None:
        if self.name not in trial.params:
            return None
        return grid_index(self.grid, trial.params[self.name])

    @staticmethod
    def _as_choice(value: float, distribution: BaseDistribution) -> Any:
        choices = getattr(distribution, "choices", None)
        if choices is None:
            return value
        return min(choices, key=lambda c: abs(float(c) - value))
