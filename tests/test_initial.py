"""The initialisation contract: every kind of :mod:`selmatch.selection.initial` starts a set the
same way: class-balanced, from the pool only, labels that are the images' own, a mask and subset
ids of the set's length, the same draw for the same settings, a manifest entry naming it.
A new kind is added to KINDS and to ``made`` below, and passes the same test."""

from __future__ import annotations

import pytest
import torch
from initial_contract import keeps_the_initialisation_contract

from selmatch.distillation.target import SetSpec, initialisation_of
from selmatch.selection.initial import KINDS, RandomInit, RealInit, SequentialInit, WindowInit
from selmatch.selection.window import WindowSpec

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
    assert init.kind == kind.kind
    keeps_the_initialisation_contract(init, fashion, fashion_split, hardness, IPC, learned, subsets)


@pytest.mark.parametrize("kind", [RandomInit, RealInit, SequentialInit], ids=lambda k: k.__name__)
def test_a_random_start_changes_with_its_seed(kind, fashion, fashion_split) -> None:
    first = made(kind, seed=0)[0].select(fashion, fashion_split, None)
    other = made(kind, seed=1)[0].select(fashion, fashion_split, None)
    assert not torch.equal(first.indices, other.indices)


def test_each_method_starts_from_its_kind() -> None:
    chosen = {
        ("selmatch", "window"): WindowInit,
        ("selmatch", "random"): RandomInit,
        ("mtt", "window"): RealInit,
        ("seqmatch", "window"): SequentialInit,
    }
    for (method, init), kind in chosen.items():
        target = SetSpec(
            method=method, init=init, ipc=IPC, alpha=0.5 if method == "selmatch" else 1.0
        )
        assert isinstance(initialisation_of(target, seed=0), kind), (method, init)


def test_a_window_needs_scores(fashion, fashion_split) -> None:
    from selmatch.core.config import ConfigError

    with pytest.raises(ConfigError, match="needs difficulty scores"):
        made(WindowInit)[0].select(fashion, fashion_split, None)
