"""Ray Tune's Optuna searcher, taught to wait and to finish when the concave search says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from selmatch_tune.concave import ConcaveGridSampler


class ConcaveSearch(OptunaSearch):
    """``OptunaSearch(sampler=ConcaveGridSampler(...))`` that returns ``Searcher.FINISHED``
    once the bracket is closed (so Tune ends the experiment without using up
    ``num_samples``) and ``None`` ("ask again later") while every useful grid point is
    already running, instead of proposing a duplicate."""

    def __init__(
        self, sampler: ConcaveGridSampler, *, marker: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(sampler=sampler, **kwargs)
        self.concave = sampler
        # A file written the moment the search declares itself finished: trials still
        # running then finish afterwards, and Tune never asks again (also after a restore),
        # so this is the one reliable record that the search ended on its own.
        self.marker = marker

    # Searcher.FINISHED is a str, which Ray documents as a valid return of suggest().
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        study = self._ot_study
        if study is not None and trial_id not in self._ot_trials:
            status = self.concave.status(study)
            if status == "finished":
                marker = getattr(self, "marker", None)
                if marker:
                    Path(marker).parent.mkdir(parents=True, exist_ok=True)
                    Path(marker).touch()
                return Searcher.FINISHED
            if status == "wait":
                return None
        config = super().suggest(trial_id)
        if isinstance(config, dict) and study is not None and self.concave.name in config:
            # A repeat of a point (a close top re-evaluated) must be a new draw of the noise,
            # not the same computation again: the trial offsets its seeds by ``repeat``.
            config["repeat"] = self._earlier_trials_at(study, config[self.concave.name], trial_id)
        return config

    def _earlier_trials_at(self, study: Any, value: Any, trial_id: str) -> int:
        number = self._ot_trials[trial_id].number
        states = (TrialState.COMPLETE, TrialState.RUNNING)  # a failed trial drew no number
        return sum(
            1 for t in study.get_trials(deepcopy=False, states=states)
            if t.number < number and self.concave.name in t.params
            and abs(float(t.params[self.concave.name]) - float(value)) < 1e-9
        )  # fmt: skip
