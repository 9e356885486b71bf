"""The registry of the search's phases: every entry is complete, and what loops over the
registry (the cost stages, the record, the trial logger's names) follows it."""

from __future__ import annotations

import dataclasses

import pytest

from selmatch_tune import costs
from selmatch_tune.config import SearchConfig
from selmatch_tune.phase_kinds import PHASES, PhaseKind, phase_kind, register_phase
from selmatch_tune.record import IpcRecord, PhaseResult, Point, StageCost
from selmatch_tune.tracking import TrialLogger


@pytest.mark.parametrize("kind", list(PHASES.values()), ids=list(PHASES))
def test_every_phase_names_a_grid_setting_a_trial_and_a_record_field(kind: PhaseKind) -> None:
    config = SearchConfig()
    assert kind.grid(config) and all(isinstance(v, float) for v in kind.grid(config))
    assert callable(kind.trial)
    assert kind.name in {f.name for f in dataclasses.fields(IpcRecord)}
    assert IpcRecord().phase(kind.name) is None
    assert "{convention}" not in kind.axis("ipc-units")
    if kind.candidate is not None:
        assert kind.candidate[0] in {f.name for f in dataclasses.fields(PhaseResult)}


def test_the_cost_stages_follow_the_registry() -> None:
    names = [stage for stage, _ in costs.STAGES]
    assert names == ["precompute", "beta", "beta_random", "alpha", "alpha_mtt", "subsets", "final"]
    extra = PhaseKind(
        name="tplus",
        symbol="T+",
        shown="T+",
        title="T+",
        grid_setting="beta_grid",
        trial_path="selmatch_tune.trials:alpha_trial",
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
