"""Ray Tune's Optuna searcher, taught to wait and to finish when the concave search says so."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from selmatch_tune.flow.concave import FAILED, ConcaveGridSampler, Decision, grid_index


class ConcaveSearch(OptunaSearch):
    """``OptunaSearch(sampler=ConcaveGridSampler(...))`` that returns ``Searcher.FINISHED``
    once the bracket is closed (so Tune ends the experiment without using up
    ``num_samples``) and ``None`` ("ask again later") while every useful grid point is
    already running, instead of proposing a duplicate.

    Those answers come from :meth:`ConcaveRule.decide_round` over the trials this searcher was
    told about through Tune's public hooks (``suggest``, ``on_trial_complete``): the grid value
    each trial got, and its score or its failure; the Optuna sampler is then told the grid
    point decided (``planned``). Trials are proposed in rounds of up to ``parallel`` (the trials
    Tune runs at once), each round decided from the earlier rounds' scores, so the points
    proposed never depend on the order in which trials finish: with deterministic trials the
    search's path and winner are the same on any machine and under any load. Nothing private
    of Ray's or Optuna's is read; the record is pickled with the searcher, so
    ``Tuner.restore`` keeps it."""

    def __init__(
        self,
        sampler: ConcaveGridSampler,
        *,
        marker: str | None = None,
        parallel: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(sampler=sampler, **kwargs)
        self.concave = sampler
        self.parallel = parallel
        self.round_start = 0  # where the current round begins in ``values``'s order
        # A file written the moment the search declares itself finished: trials still
        # running then finish afterwards, and Tune never asks again (also after a restore),
        # so this is the one reliable record that the search ended on its own.
        self.marker = marker
        self.values: dict[str, float] = {}  # trial id → its grid value, in suggestion order
        self.scores: dict[str, float] = {}  # trial id → its score (higher is better)
        self.failed: set[str] = set()  # trial ids that ended without a score

    # Searcher.FINISHED is a str, which Ray documents as a valid return of suggest().
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        self._migrate()
        if trial_id not in self.values:
            decision = self.decision()
            if decision.status == "finished":
                marker = getattr(self, "marker", None)
                if marker:
                    Path(marker).parent.mkdir(parents=True, exist_ok=True)
                    Path(marker).touch()
                return Searcher.FINISHED
            if decision.status == "wait":
                return None
            self.concave.planned = decision.index
        config = super().suggest(trial_id)
        name = self.concave.name
        if isinstance(config, dict) and name in config:
            # A repeat of a point (a close top re-evaluated) must be a new draw of the noise,
            # not the same computation again: the trial offsets its seeds by ``repeat``, the
            # number of earlier trials at its value that did not fail.
            value = float(config[name])
            config["repeat"] = sum(
                1
                for other, v in self.values.items()
                if other != trial_id and other not in self.failed and abs(v - value) < 1e-9
            )
            self.values.setdefault(trial_id, value)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs: Any
    ) -> None:
        super().on_trial_complete(trial_id, result=result, error=error, **kwargs)
        self._migrate()
        if trial_id in self.scores or trial_id in self.failed:
            return  # a second completion of a finished trial (Ray warns and ignores it too)
        score = None if error or not result else result.get(self.metric)
        if score is None or not math.isfinite(float(score)):
            self.failed.add(trial_id)
        else:
            self.scores[trial_id] = (-1.0 if self.mode == "min" else 1.0) * float(score)

    def decision(self) -> Decision:
        """What the concave search does next, given the trials so far (in rounds; a failed
        trial's point counts as unevaluated again)."""
        trials: list[tuple[int, float | str | None]] = []
        for trial_id, value in self.values.items():
            index = grid_index(self.concave.grid, value)
            if index is None:
                continue
            state = FAILED if trial_id in self.failed else self.scores.get(trial_id)
            trials.append((index, state))
        # a searcher pickled before rounds existed: its next round begins now
        start = getattr(self, "round_start", len(trials))
        decision, self.round_start = self.concave.rule.decide_round(
            trials, min(start, len(trials)), getattr(self, "parallel", 1)
        )
        return decision

    def _migrate(self) -> None:
        """A searcher pickled by a version before the record (an interrupted experiment
        restored after an upgrade): the record is rebuilt once from the Optuna study that
        Ray's searcher kept (its attributes, read here only, for that case)."""
        if "values" in self.__dict__:
            return
        self.values, self.scores, self.failed = {}, {}, set()
        study = getattr(self, "_ot_study", None)
        if study is None:
            return
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        trials = getattr(self, "_ot_trials", {}) or {}
        for trial_id, trial in sorted(trials.items(), key=lambda kv: kv[1].number):
            known = frozen.get(trial.number)
            if known is None or self.concave.name not in known.params:
                continue
            self.values[trial_id] = float(known.params[self.concave.name])
            if known.state.name == "COMPLETE" and known.value is not None:
                sign = -1.0 if self.mode == "min" else 1.0
                self.scores[trial_id] = sign * float(known.value)
            elif known.state.name != "RUNNING":
                self.failed.add(trial_id)
