"""The search's typed record: every search_state.json this project has committed (four
searches, three versions of the search) reads and writes back as its migration, and what the search
asks of it (the winner, its short-budget scores, whether it is a selection as is) follows the
record's phases."""

import json
from pathlib import Path

import pytest

from selmatch.core.config import ConfigError
from selmatch.core.migrate import SEARCH_RECORD, migrate
from selmatch_tune.results.record import STATE, SearchRecord

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted((ROOT / "experiments" / "results").glob(f"*/{STATE}"))


def test_the_committed_records_are_found() -> None:
    assert len(COMMITTED) >= 4


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_a_committed_record_reads_and_writes_back_as_migrated(path, tmp_path) -> None:
    record = SearchRecord.load(path.parent)
    assert record.ipcs and all(isinstance(ipc, int) for ipc in record.ipcs)
    for entry in record.ipcs.values():
        assert entry.beta is not None and entry.beta.best in entry.beta.curve
    record.save(tmp_path)
    written, committed = json.loads((tmp_path / STATE).read_text()), json.loads(path.read_text())
    assert written == migrate(SEARCH_RECORD, committed, path)
    assert {k: written[k] for k in committed} | {"ipcs": None} == committed | {"ipcs": None}


def test_the_winner_and_its_scores_follow_the_phases() -> None:
    record = SearchRecord.load(ROOT / "experiments" / "results" / "fmnist-study-v3")
    entry = record.ipcs[300]
    assert entry.beta is not None and entry.alpha is not None
    # plan v3 at 5 %: the random subset won the β phase, the α phase's best was 0.9
    assert entry.beta.init == "random" and entry.beta.random is not None
    assert entry.beta.random.val > entry.beta.best_point.val
    winner = entry.winner
    assert winner is not None
    assert (winner.init, winner.alpha, winner.method) == ("random", entry.alpha.best, "selmatch")
    assert entry.winner_scores().val == entry.alpha.curve[entry.alpha.best].val
    assert entry.selected_as_is() is None  # it learned something (α > 0)


def test_a_winner_of_plain_mtt_scores_with_mtt_and_alpha_zero_is_a_selection() -> None:
    point = {"val": 0.5, "test": 0.4, "n": 1}
    phase = {
        "curve": {"0.0": point, "0.5": point | {"val": 0.6}},
        "best": 0.5,
        "trials": 2,
        "failed": 0,
    }
    record = SearchRecord.from_dict(
        {
            "config": {},
            "ipcs": {
                "10": {
                    "beta": phase,
                    "alpha": phase | {"mtt": {"val": 0.7, "test": 0.65, "n": 1}},
                    "winner": {"init": "random", "alpha": 1.0, "candidate": "mtt"},
                }
            },
        }
    )
    entry = record.ipcs[10]
    assert entry.winner is not None and entry.winner.method == "mtt"
    assert (entry.winner_scores().val, entry.winner_scores().test) == (0.7, 0.65)
    entry.winner = entry.winner.replace(alpha=0.0, candidate="alpha")
    assert entry.selected_as_is() == "random"


def test_a_record_that_is_not_one_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / STATE).write_text(json.dumps({"config": {}, "ipcs": {"10": {"beta": {}}}}))
    with pytest.raises(ConfigError, match="is not a search record this version reads"):
        SearchRecord.load(tmp_path)
    (tmp_path / STATE).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a search record this version reads"):
        SearchRecord.load(tmp_path)
