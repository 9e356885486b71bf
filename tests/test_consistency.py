import math

import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.data import ImageDataset, balanced_subset, holdout_split
from selmatch.difficulty.scores import ScoreTable
from selmatch.selection.consistency import (
    MIN_HOLDOUTS,
    ConsistencyConfig,
    combine_consistency,
    estimate_consistency,
    held_out_indices,
    network_file,
    scored_indices,
)
from selmatch.training.models import ModelConfig


@pytest.fixture(scope="module")
def flipped(fashion: ImageDataset) -> tuple[ImageDataset, torch.Tensor]:
    """100 real images per class, 5 % of them with a wrong label (the next class)."""
    picks = balanced_subset(fashion.train_labels, fashion.num_classes, 100, seed=1)
    labels = fashion.train_labels[picks].clone()
    wrong = torch.randperm(len(picks), generator=torch.Generator().manual_seed(2))[:50]
    labels[wrong] = (labels[wrong] + 1) % fashion.num_classes
    dataset = ImageDataset(
        name="flipped",
        train_images=fashion.train_images[picks],
        train_labels=labels,
        test_images=fashion.test_images[:100],
        test_labels=fashion.test_labels[:100],
        class_names=fashion.class_names,
        mean=fashion.mean,
        std=fashion.std,
        source="test",
    )
    is_wrong = torch.zeros(len(picks), dtype=torch.bool)
    is_wrong[wrong] = True
    return dataset, is_wrong


def small(**changes) -> ConsistencyConfig:
    settings = {
        "dataset": "flipped",
        "model": ModelConfig(width=8),
        "num_networks": 4,
        "train_fraction": 0.5,
        "epochs": 8,
        "batch_size": 64,
        "lr": 0.05,
    }
    return ConsistencyConfig(**(settings | changes))


@pytest.mark.slow
def test_flipped_labels_rank_hardest(flipped, tmp_path) -> None:
    dataset, is_wrong = flipped
    table = estimate_consistency(dataset, small(), tmp_path, device="cpu", progress=False)
    hardness = table.hardness("consistency")  # higher = harder: the score turned
    scored = torch.isfinite(hardness)
    # AUC: the chance that a flipped sample is ranked harder than a correctly labelled one
    bad, good = hardness[scored & is_wrong], hardness[scored & ~is_wrong]
    auc = (bad[:, None] > good[None, :]).double().mean().item()
    assert auc > 0.9, auc
    assert table.directions["consistency"] is False  # higher score = easier, like the C-score


def test_every_scored_sample_is_held_out_at_least_twice_and_nothing_is_nan(flipped, tmp_path):
    dataset, _ = flipped
    config = small(epochs=1)
    table = estimate_consistency(dataset, config, tmp_path, device="cpu", progress=False)
    score = table.scores["consistency"]
    scored = scored_indices(dataset, config)
    assert bool(torch.isfinite(score[scored]).all())
    assert bool((score[scored] >= 0).all() & (score[scored] <= 1).all())
    val = holdout_split(dataset.train_labels, dataset.num_classes).val
    assert bool(torch.isnan(score[val]).all())  # the validation slice is never scored


@pytest.mark.parametrize(
    ("fraction", "networks"), [(0.5, 4), (0.5, 5), (0.6, 6), (0.75, 8), (2 / 3, 7), (0.8, 10)]
)
def test_the_splits_hold_every_sample_out_at_least_twice(flipped, fraction, networks) -> None:
    dataset, _ = flipped
    config = small(train_fraction=fraction, num_networks=networks)
    scored = scored_indices(dataset, config)
    count = torch.zeros(len(dataset.train_labels), dtype=torch.int64)
    for k in range(networks):
        held = held_out_indices(dataset.train_labels, 10, scored, config, k)
        assert len(held.unique()) == len(held)
        share = len(held) / len(scored)
        assert 1 - fraction - 0.02 <= share <= 1 - fraction + 1 / config.networks_per_round
        count[held] += 1
    assert int(count[scored].min()) >= MIN_HOLDOUTS
    assert int(count.sum()) == int(count[scored].sum())  # nothing outside the scored pool


def test_fewer_hold_outs_than_two_give_nan() -> None:
    results = [
        {"held_out": torch.tensor([0, 1]), "probability": torch.tensor([0.2, 0.4])},
        {"held_out": torch.tensor([1, 2]), "probability": torch.tensor([0.6, 0.8])},
    ]
    score, count = combine_consistency(4, results)
    assert count.tolist() == [1, 2, 1, 0]
    assert math.isnan(score[0]) and math.isnan(score[2]) and math.isnan(score[3])
    assert score[1].item() == pytest.approx(0.5)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_scores_and_another_does_not(flipped, tmp_path) -> None:
    dataset, _ = flipped
    runs = [
        estimate_consistency(
            dataset, small(epochs=1, seed=seed), tmp_path / f"{i}", device="cpu", progress=False
        ).scores["consistency"]
        for i, seed in enumerate((3, 3, 4))
    ]
    same = torch.isfinite(runs[0])
    assert torch.equal(runs[0][same], runs[1][same])
    assert not torch.equal(runs[0][same], runs[2][same])


@pytest.mark.slow
def test_a_rerun_reuses_the_finished_networks_and_trains_only_the_missing(flipped, tmp_path):
    dataset, _ = flipped
    config = small(epochs=1)
    first = estimate_consistency(dataset, config, tmp_path, device="cpu", progress=False)
    stamps = {k: network_file(tmp_path, k).stat().st_mtime_ns for k in range(4)}
    network_file(tmp_path, 2).unlink()  # as if interrupted before network 2 was saved
    again = estimate_consistency(dataset, config, tmp_path, device="cpu", progress=False)
    assert all(network_file(tmp_path, k).stat().st_mtime_ns == stamps[k] for k in (0, 1, 3))
    assert torch.equal(
        first.scores["consistency"].nan_to_num(-1), again.scores["consistency"].nan_to_num(-1)
    )
    assert "consistency" in ScoreTable.load(tmp_path).scores
    with pytest.raises(ConfigError, match="other settings \\(epochs\\)"):
        estimate_consistency(dataset, config.replace(epochs=2), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_networks": 3}, "--networks must be an integer in \\[4,"),
        ({"train_fraction": 0.75, "num_networks": 6}, "--networks must be an integer in \\[8,"),
        ({"train_fraction": 1.0}, "--train-fraction must be a number in \\(0, 0.95\\]"),
        ({"epochs": 0}, "--epochs must be an integer in \\[1,"),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        small(**changes)
