import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.data import balanced_subset, holdout_split, indices_by_class
from selmatch.data.balance import VAL_FLOOR


def labels_with(counts: list[int]) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_indices_by_class_partitions_the_set() -> None:
    labels = labels_with([5, 7, 3])
    groups = indices_by_class(labels, 3)
    assert [len(g) for g in groups] == [5, 7, 3]
    assert sorted(torch.cat(groups).tolist()) == list(range(15))
    for c, group in enumerate(groups):
        assert (labels[group] == c).all()


def test_balanced_subset_has_k_per_class_without_duplicates() -> None:
    labels = labels_with([50, 80, 60])
    subset = balanced_subset(labels, 3, 20, seed=1)
    assert torch.bincount(labels[subset]).tolist() == [20, 20, 20]
    assert len(set(subset.tolist())) == 60
    assert torch.equal(subset, balanced_subset(labels, 3, 20, seed=1))
    assert not torch.equal(subset, balanced_subset(labels, 3, 20, seed=2))


def test_balanced_subset_respects_among() -> None:
    labels = labels_with([30, 30])
    among = torch.arange(0, 60, 2)
    subset = balanced_subset(labels, 2, 5, seed=0, among=among)
    assert set(subset.tolist()) <= set(among.tolist())


def test_ipc_larger_than_a_class_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"--ipc must be an integer in \[1, 3\], got 4"):
        balanced_subset(labels_with([10, 3]), 2, 4, seed=0)


def test_holdout_split_is_class_balanced_disjoint_and_deterministic() -> None:
    labels = labels_with([100, 200, 500])
    split = holdout_split(labels, 3, val_fraction=0.1, seed=3)
    assert torch.bincount(labels[split.val]).tolist() == [10, 20, 50]
    assert set(split.val.tolist()).isdisjoint(split.pool.tolist())
    assert len(split.val) + len(split.pool) == len(labels)
    assert torch.equal(split.val, holdout_split(labels, 3, val_fraction=0.1, seed=3).val)


def test_a_small_class_still_gets_the_validation_floor() -> None:
    # 2 % of 140 would be 3 images: steps of 33 points in a class's validation accuracy
    labels = labels_with([140, 6000, 12])
    split = holdout_split(labels, 3, val_fraction=0.02, seed=0)
    assert torch.bincount(labels[split.val]).tolist() == [VAL_FLOOR, 120, 6]  # half of 12


def test_holdout_can_be_disabled_and_rejects_bad_fractions() -> None:
    labels = labels_with([4, 4])
    assert len(holdout_split(labels, 2, val_fraction=0.0).val) == 0
    with pytest.raises(ConfigError, match=r"--val-fraction must be a number in \[0, 0.5\]"):
        holdout_split(labels, 2, val_fraction=0.7)
