"""The initialisation contract (tests/test_initial.py), shared with the method contract
(tests/test_methods.py): every start a distillation can make keeps it."""

from __future__ import annotations

import json

import torch

from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.selection.initial import Initial, Initialisation


def keeps_the_initialisation_contract(
    init: Initialisation,
    dataset: ImageDataset,
    split: HoldoutSplit,
    hardness: torch.Tensor | None,
    ipc: int,
    learned: int,
    subsets: int,
) -> Initial:
    """Class-balanced, from the pool only, labels that are the images' own, ``learned`` images
    per class learned, ``subsets`` class-balanced subsets, the same draw for the same
    settings, a manifest entry naming the kind. Returns the start."""
    start = init.select(dataset, split, hardness)
    n = ipc * dataset.num_classes
    # class-balanced, grouped by class, from the pool only, each image once
    assert torch.equal(
        torch.bincount(start.labels, minlength=dataset.num_classes),
        torch.full((dataset.num_classes,), ipc),
    )
    assert torch.equal(start.labels, start.labels.sort(stable=True).values)
    assert torch.isin(start.indices, split.pool).all()
    assert not torch.isin(start.indices, split.val).any()
    assert len(set(start.indices.tolist())) == n
    assert torch.equal(start.labels, dataset.train_labels[start.indices])
    # what is learned and in which stage: the set's length, the kind's share, K subsets
    assert start.distill_mask.dtype == torch.bool and start.distill_mask.shape == (n,)
    per_class = torch.bincount(start.labels[start.distill_mask], minlength=dataset.num_classes)
    assert (per_class == learned).all()
    assert start.subset_ids.dtype == torch.int64 and start.subset_ids.shape == (n,)
    assert set(start.subset_ids.tolist()) == set(range(subsets))
    for k in range(subsets):  # every subset class-balanced: near-equal parts of each class
        sizes = torch.bincount(start.labels[start.subset_ids == k], minlength=dataset.num_classes)
        assert len(set(sizes.tolist())) == 1
    # the same settings draw the same set; the manifest names the kind
    again = init.select(dataset, split, hardness)
    assert torch.equal(again.indices, start.indices)
    assert torch.equal(again.distill_mask, start.distill_mask)
    assert start.info["init"] == init.kind and json.loads(json.dumps(start.info)) == start.info
    return start
