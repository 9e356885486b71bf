"""The registry of the search's phases: every entry is complete, and what loops over the
registry (the cost stages, the record, the trial logger's names) follows it."""

from __future__ import annotations

import dataclasses

import pytest

from selmatch_tune.results import costs
from selmatch_tune.results.record import IpcRecord, PhaseResult, Point, StageCost
from selmatch_tune.results.tracking import TrialLogger
from selmatch_tune.settings.config import SearchConfig
from selmatch_tune.settings.phase_kinds import PHASES, PhaseKind, phase_kind, register_phase


@pytest.mark.parametrize("kind", list(PHASES.values()), ids=list(PHASES))
def test_every_phase_names_a_grid_setting_a_trial_and_a_record_field(kind: PhaseKind) -> None:
    config = SearchConfig()
    grid = kind.grid(config)
    assert grid or kind.refines  # a refining phase is off by default (an empty grid)
    assert all(isinstance(v, float) for v in grid)
    assert callable(kind.trial)
    if not kind.refines:  # the built-in phases keep their own fields of the record
        assert kind.name in {f.name for f in dataclasses.fields(IpcRecord)}
    entry = IpcRecord()
    assert entry.phase(kind.name) is None
    result = PhaseResult(curve={1.0: Point(val=0.5, test=0.4, n=1)}, best=1.0, trials=1, failed=0)
    entry.set_phase(kind.name, result)
    assert IpcRecord.from_dict(entry.to_dict()).phase(kind.name) == result
    assert "{convention}" not in kind.axis("ipc-units")
    if kind.candidate is not None:
        assert kind.candidate[0] in {f.name for f in dataclasses.fields(PhaseResult)}


def test_the_cost_stages_follow_the_registry() -> None:
    names = [stage for stage, _ in costs.STAGES]
    assert names == [
        "precompute",
        "beta",
        "beta_random",
        "alpha",
        "alpha_mtt",
        "subsets",
        "max_start_epoch",
        "final",
    ]
    extra = PhaseKind(
        name="tplus",
        symbol="T+",
        shown="T+",
        title="T+",
        grid_setting="beta_grid",
        trial_path="selmatch_tune.flow.trials:alpha_trial",
        xlabel="T+",
        stage="T+ trials",
    )
    register_phase(extra)
    try:
        assert ("tplus", "T+ trials") in costs._stages()
        with pytest.raises(ValueError, match="registered twice"):
            register_phase(extra)
    finally:
        del PHASES["tplus"]


def test_a_phase_cost_is_read_through_the_registry() -> None:
    point = Point(val=0.5, test=0.4, n=1)
    entry = IpcRecord(
        alpha=PhaseResult(
            curve={0.0: point}, best=0.0, trials=1, failed=0, cost=StageCost(10.0, 8.0, 1)
        )
    )
    record = costs.SearchRecord(config={}, ipcs={10: entry})
    rows = {row.stage: row for row in costs.stage_costs(record)}
    assert rows["alpha"].seconds == 10.0 and "beta" not in rows


def test_the_trial_logger_names_a_value_by_its_phase_symbol() -> None:
    class Trial:
        trial_id, config = "abc", {"subsets": 3.0}

    logger = TrialLogger(None, phase="subsets", ipc=10, searched="subsets")  # type: ignore[arg-type]
    assert logger._name(Trial()) == "K = 3 (trial abc)"
    with pytest.raises(KeyError, match="no phase 'gamma'; registered: beta, alpha, subsets"):
        phase_kind("gamma")


def test_a_refining_phase_sets_its_value_where_it_says_and_widens_the_matched_epochs(
    trial_spec,
) -> None:
    """A phase that refines the winner by a matching setting: Tune's choice at the top of a
    trial's config lands in the spec's ``distill``; the record keeps it with the winner; the
    table gets its columns; the experts' epochs the precompute keeps cover its grid."""
    from selmatch_tune.flow.search import matched_epochs
    from selmatch_tune.flow.trials import TrialSpec
    from selmatch_tune.results.outputs import columns

    extra = PhaseKind(
        name="tplus",
        symbol="T+",
        shown="T+",
        title="T+",
        grid_setting="subsets_grid",  # any grid setting of the config: (2, 3)
        trial_path="selmatch_tune.flow.trials:alpha_trial",
        xlabel="T+",
        stage="T+ trials",
        sets="distill.max_start_epoch",
        integer=True,
        refines=True,
    )
    register_phase(extra)
    try:
        config = SearchConfig()
        spec = trial_spec(distill=config.distill)
        tried = TrialSpec.from_dict({**spec.to_dict(), "tplus": 3.0})
        assert tried.distill is not None and tried.distill.max_start_epoch == 3
        assert spec.with_value("tplus", 2.0).distill.max_start_epoch == 2  # type: ignore[union-attr]
        assert columns()[-3:] == ("tplus", "tplus_trials", "tplus_grid_size")
        _, end = matched_epochs(config.replace(distill=config.distill.replace(max_start_epoch=1)))
        assert end == 3 + config.distill.expert_epochs  # the grid's largest T+, not the setting's
    finally:
        del PHASES["tplus"]
