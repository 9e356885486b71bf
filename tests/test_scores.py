import numpy as np
import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.difficulty.scores import (
    ForgettingTracker,
    ScoreTable,
    combine_expert_scores,
    forgetting_counts,
    hardness,
    import_score_file,
)


def test_forgetting_counts_on_a_hand_made_history() -> None:
    # rows: presentations; columns: samples
    history = torch.tensor(
        [[1, 0, 0, 1, 1], [0, 1, 0, 1, 0], [1, 0, 0, 1, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 0]],
        dtype=torch.bool,
    )
    # sample 0: 1→0 at steps 1 and 3 → 2 events; sample 1: 1→0 once → 1;
    # sample 2: never learned → 5 (its presentations: above any learned sample);
    # sample 3: forgotten at the end → 1; sample 4: (1, 0, 1, 0, 0) → 2 events.
    assert forgetting_counts(history).tolist() == [2.0, 1.0, 5.0, 1.0, 2.0]


def test_online_tracker_equals_the_offline_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    history = torch.rand(12, 40, generator=generator) < 0.6
    history[:, 7] = False  # a never-learned sample
    tracker = ForgettingTracker(40)
    for step in range(12):
        order = torch.randperm(40, generator=generator)
        for batch in order.split(9):  # samples arrive in shuffled mini-batches
            tracker.update(batch, history[step, batch])
    assert torch.equal(tracker.scores(), forgetting_counts(history))
    assert tracker.scores()[7] == 12


@pytest.mark.parametrize(
    ("kind", "flipped"), [("forgetting", False), ("el2n", False), ("cscore", True)]
)
def test_hardness_direction_of_every_known_score(kind, flipped) -> None:
    values = torch.tensor([0.1, 0.9, 0.5])
    hard = hardness(values, kind)
    hardest = int(hard.argmax())
    assert hardest == (0 if flipped else 1)


def test_unknown_direction_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no known direction"):
        hardness(torch.zeros(2), "mystery")


def test_expert_scores_average_and_keep_nan_where_unscored() -> None:
    a = {"el2n": torch.tensor([1.0, float("nan")])}
    b = {"el2n": torch.tensor([3.0, float("nan")])}
    out = combine_expert_scores([a, b])["el2n"]
    assert out[0] == 2.0 and torch.isnan(out[1])


def test_score_table_round_trip(tmp_path) -> None:
    table = ScoreTable(
        {"cscore": torch.tensor([0.2, 0.8], dtype=torch.float64)},
        {"cscore": False},
        {"dataset": "x"},
    )
    table.save(tmp_path)
    loaded = ScoreTable.load(tmp_path)
    assert torch.equal(loaded.scores["cscore"], table.scores["cscore"])
    assert loaded.directions == {"cscore": False} and loaded.info["dataset"] == "x"
    assert int(loaded.hardness("cscore").argmax()) == 0
    with pytest.raises(ConfigError, match="--score must be one of cscore"):
        loaded.hardness("forgetting")


def test_import_accepts_a_good_file(tmp_path) -> None:
    path = tmp_path / "c.npy"
    np.save(path, np.linspace(0, 1, 5))
    assert import_score_file(path, num_samples=5).tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros(4), r"holds shape \(4,\); expected one score per training sample: \(5,\)"),
        (np.zeros((5, 2)), r"holds shape \(5, 2\)"),
        (np.array([0, 1, np.nan, 2, 3.0]), "1 non-finite value"),
        (np.array([0, 1, np.inf, -np.inf, 3.0]), "2 non-finite value"),
        (np.array(["a"] * 5), "expected numbers"),
        (np.array([{"x": 1}] * 5, dtype=object), "not a plain numeric .npy"),
    ],
)
def test_import_rejects_bad_files(tmp_path, content, message) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(ConfigError, match=message):
        import_score_file(path, num_samples=5)


def test_import_needs_an_existing_npy(tmp_path) -> None:
    with pytest.raises(ConfigError, match="expected a .npy file"):
        import_score_file(tmp_path / "x.csv", num_samples=5)
    with pytest.raises(ConfigError, match="no such file"):
        import_score_file(tmp_path / "x.npy", num_samples=5)
