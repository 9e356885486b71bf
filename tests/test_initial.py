"""The initialisation contract: every kind of :mod:`selmatch.initial` starts a set the same
way: class-balanced, from the pool only, labels that are the images' own, a mask and subset
ids of the set's length, the same draw for the same settings, a manifest entry naming it.
A new kind is added to KINDS and to ``made`` below, and passes the same test."""

from __future__ import annotations

import json

import pytest
import torch

from selmatch.initial import KINDS, RandomInit, RealInit, SequentialInit, WindowInit
from selmatch.target import SetSpec, initialisation_of
from selmatch.window import WindowSpec

IPC = 12


def made(kind: type, seed: int = 0):
    """An instance of each kind, and what it must learn per class and how many subsets."""
    return {
        WindowInit: (WindowInit(WindowSpec(IPC, 0.2, 0.25, "ipc-units")), 3, 1),
        RandomInit: (RandomInit(IPC, 0.5, seed), 6, 1),
        RealInit: (RealInit(IPC, seed), IPC, 1),
        SequentialInit: (SequentialInit(IPC, 3, seed), IPC, 3),
    }[kind]


@pytest.fixture(scope="module")
def hardness(fashion) -> torch.Tensor:
    return torch.rand(len(fashion.train_labels), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_kind_keeps_the_contract(kind, fashion, fashion_split, hardness) -> None:
    init, learned, subsets = made(kind)
    start = init.select(fashion, fashion_split, hardness)
    n = IPC * fashion.num_classes
    # class-balanced, grouped by class, from the pool only, each image once
    assert torch.equal(torch.bincount(start.labels, minlength=fashion.num_classes),
                       torch.full((fashion.num_classes,), IPC))  # fmt: skip
    assert torch.equal(start.labels, start.labels.sort(stable=True).values)
    assert torch.isin(start.indices, fashion_split.pool).all()
    assert not torch.isin(start.indices, fashion_split.val).any()
    assert len(set(start.indices.tolist())) == n
    assert torch.equal(start.labels, fashion.train_labels[start.indices])
    # what is learned and in which stage: the set's length, the kind's share, K subsets
    assert start.distill_mask.dtype == torch.bool and start.distill_mask.shape == (n,)
    per_class = torch.bincount(start.labels[start.distill_mask], minlength=fashion.num_classes)
    assert (per_class == learned).all()
    assert start.subset_ids.dtype == torch.int64 and start.subset_ids.shape == (n,)
    assert set(start.subset_ids.tolist()) == set(range(subsets))
    for k in range(subsets):  # every subset class-balanced: near-equal parts of each class
        sizes = torch.bincount(start.labels[start.subset_ids == k], minlength=fashion.num_classes)
        assert len(set(sizes.tolist())) == 1
    # the same settings draw the same set; the manifest names the kind
    again = init.select(fashion, fashion_split, hardness)
    assert torch.equal(again.indices, start.indices)
    assert torch.equal(again.distill_mask, start.distill_mask)
    assert start.info["init"] == kind.kind and json.loads(json.dumps(start.info)) == start.info


@pytest.mark.parametrize("kind", [RandomInit, RealInit, SequentialInit], ids=lambda k: k.__name__)
def test_a_random_start_changes_with_its_seed(kind, fashion, fashion_split) -> None:
    first = made(kind, seed=0)[0].select(fashion, fashion_split, None)
    other = made(kind, seed=1)[0].select(fashion, fashion_split, None)
    assert not torch.equal(first.indices, other.indices)


def test_each_method_starts_from_its_kind() -> None:
    chosen = {
        ("selmatch", "window"): WindowInit, ("selmatch", "random"): RandomInit,
        ("mtt", "window"): RealInit, ("seqmatch", "window"): SequentialInit,
    }  # fmt: skip
    for (method, init), kind in chosen.items():
        target = SetSpec(method=method, init=init, ipc=IPC, alpha=0.5 if method ==
                         "selmatch" else 1.0)  # fmt: skip
        assert isinstance(initialisation_of(target, seed=0), kind), (method, init)


def test_a_window_needs_scores(fashion, fashion_split) -> None:
    from selmatch.config import ConfigError

    with pytest.raises(ConfigError, match="needs difficulty scores"):
        made(WindowInit)[0].select(fashion, fashion_split, None)
