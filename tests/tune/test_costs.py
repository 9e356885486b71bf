"""The search's cost by stage is read from its record: wall seconds per stage summed over the
IPCs, busy and idle trial slots of the Tune stages, and the rest of the search's wall time."""

import pytest

from selmatch_tune.results.costs import format_costs, stage_costs
from selmatch_tune.results.record import (
    Baseline,
    FinalResult,
    IpcRecord,
    PhaseResult,
    Point,
    SearchRecord,
    StageCost,
)


def phase(cost: StageCost) -> PhaseResult:
    return PhaseResult(
        curve={0.5: Point(val=0.8, test=0.8, n=1)}, best=0.5, trials=1, failed=0, cost=cost
    )


def test_stage_costs_sum_the_ipcs_and_count_idle_slots() -> None:
    record = SearchRecord(config={}, seconds=1000.0, precompute=StageCost(100.0))
    for ipc in (10, 50):
        final = FinalResult(
            test_mean=0.8, test_std=0.0, val_mean=0.8, seeds=(0,), epochs=1, cost=StageCost(50.0)
        )
        entry = IpcRecord(
            beta=phase(StageCost(100.0, 150.0, 2)),
            alpha=phase(StageCost(200.0, 400.0, 2)),
            final=final,
        )
        entry.beta.random = Baseline(val=0.8, test=0.8, n=1, cost=StageCost(20.0, 20.0, 2))
        record.ipcs[ipc] = entry
    rows = {row.stage: row for row in stage_costs(record)}
    assert list(rows) == ["precompute", "beta", "beta_random", "alpha", "final", "other"]
    assert rows["beta"].seconds == 200.0 and rows["beta"].trial_seconds == 300.0
    assert rows["beta"].idle_slot_seconds == pytest.approx(2 * 2 * 100.0 - 300.0)
    assert rows["alpha"].idle_slot_seconds == 0.0  # every slot busy the whole time
    assert rows["beta_random"].idle_slot_seconds == pytest.approx(2 * 2 * 20.0 - 40.0)
    assert rows["precompute"].trial_seconds is None and rows["final"].seconds == 100.0
    assert rows["other"].seconds == pytest.approx(1000.0 - 100 - 200 - 40 - 400 - 100)
    table = format_costs(list(rows.values()))
    assert "| β trials | 200 | 20 % | 300 | 100 (25 %) |" in table
    assert "| **total** | **1000** |" in table


def test_a_record_without_timings_has_no_rows_and_a_cost_survives_the_json() -> None:
    assert stage_costs(SearchRecord(config={}, seconds=5.0)) == []
    record = SearchRecord(config={}, precompute=StageCost(3.0).plus(StageCost(2.0)))
    record.ipcs[10] = IpcRecord(beta=phase(StageCost(10.0, 12.0, 2)))
    again = SearchRecord.from_dict(record.to_dict())
    assert again.precompute == StageCost(5.0)
    assert again.ipcs[10].beta.cost.idle == pytest.approx(1 - 12.0 / 20.0)
