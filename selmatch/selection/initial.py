"""Where a synthetic set starts: one protocol, four kinds.

Every kind answers :meth:`Initialisation.select` with an :class:`Initial`: which real training
images the set starts from (drawn from the split's pool, never its validation slice; IPC per
class, grouped by class), their labels, which of them are learned (``distill_mask``), the
SeqMatch subset each belongs to (``subset_ids``), and what the manifest says of it (``info``,
whose ``"init"`` names the kind). A new kind (a coreset, another score's window) is one more
class with ``kind`` and ``select``; ``tests/test_initial.py`` runs the same contract on every
kind in :data:`KINDS`.

- :class:`WindowInit`: SelMatch's difficulty window at β; the easier α share learned.
- :class:`RandomInit`: SelMatch from a random class-balanced subset (what the search falls
  back to when it beats every window); a random α share learned.
- :class:`RealInit`: MTT's random class-balanced real images, every one learned.
- :class:`SequentialInit`: SeqMatch's K subsets of a random class-balanced draw (per class,
  near-equal parts, larger first: 50 → 17/17/16), every image learned in its stage.

The β trials and the final evaluations train a selection with these same kinds
(:func:`selmatch.evaluation.sweep.evaluate_window`,
:func:`selmatch.evaluation.sweep.evaluate_random`), so what a β trial scores is what a distillation
starts from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from selmatch.core.config import ConfigError
from selmatch.data import HoldoutSplit, ImageDataset, balanced_subset
from selmatch.selection.window import BETA_CONVENTION_TEXT, WindowSpec, select_window


@dataclass
class Initial:
    """A set's starting point (module docstring)."""

    indices: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor
    subset_ids: torch.Tensor
    info: dict[str, Any]


class Initialisation(Protocol):
    """Selects a set's starting point from the real data."""

    kind: ClassVar[str]

    def select(
        self, dataset: ImageDataset, split: HoldoutSplit, hardness: torch.Tensor | None
    ) -> Initial: ...


@dataclass(frozen=True)
class WindowInit:
    """The window at ``spec.beta`` of the difficulty order (hardest first within a class); its
    easier ``spec.alpha`` share is ``D_distill``."""

    spec: WindowSpec
    kind: ClassVar[str] = "window"

    def select(
        self, dataset: ImageDataset, split: HoldoutSplit, hardness: torch.Tensor | None
    ) -> Initial:
        if hardness is None:
            raise ConfigError("--method selmatch needs difficulty scores (--scores)")
        window = select_window(
            hardness, dataset.train_labels, dataset.num_classes, self.spec, among=split.pool
        )
        info = {
            "init": self.kind,
            "window": self.spec.to_dict(),
            "skipped_per_class": list(window.skipped),
            "beta_convention_meaning": BETA_CONVENTION_TEXT[self.spec.beta_convention],
        }
        subset_ids = torch.zeros(len(window.indices), dtype=torch.int64)
        return Initial(window.indices, window.labels, window.distill_mask, subset_ids, info)


def _draw(
    dataset: ImageDataset, split: HoldoutSplit, ipc: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random class-balanced draw of the pool: indices, labels, each image's place in its
    class's draw."""
    indices = balanced_subset(
        dataset.train_labels, dataset.num_classes, ipc, seed=seed, among=split.pool
    )
    return indices, dataset.train_labels[indices], torch.arange(len(indices)) % ipc


@dataclass(frozen=True)
class RandomInit:
    """A random class-balanced subset (seed ``seed``); a random subset has no difficulty order
    to split by, so ``D_distill`` is the last int(IPC·α) of each class's draw: a random α
    share."""

    ipc: int
    alpha: float
    seed: int
    kind: ClassVar[str] = "random"

    def select(
        self, dataset: ImageDataset, split: HoldoutSplit, hardness: torch.Tensor | None
    ) -> Initial:
        indices, labels, position = _draw(dataset, split, self.ipc, self.seed)
        mask = position >= self.ipc - int(self.ipc * self.alpha)
        subset_ids = torch.zeros(len(indices), dtype=torch.int64)
        return Initial(
            indices, labels, mask, subset_ids, {"init": self.kind, "subset_seed": self.seed}
        )


@dataclass(frozen=True)
class RealInit:
    """MTT's start: random class-balanced real images, every one learned."""

    ipc: int
    seed: int
    kind: ClassVar[str] = "random class-balanced real"

    def select(
        self, dataset: ImageDataset, split: HoldoutSplit, hardness: torch.Tensor | None
    ) -> Initial:
        indices, labels, _ = _draw(dataset, split, self.ipc, self.seed)
        everything = torch.ones(len(indices), dtype=torch.bool)
        subset_ids = torch.zeros(len(indices), dtype=torch.int64)
        return Initial(indices, labels, everything, subset_ids, {"init": self.kind})


@dataclass(frozen=True)
class SequentialInit:
    """SeqMatch's start: a random class-balanced draw cut, per class, into ``subsets``
    near-equal parts (larger parts first), learned one after another."""

    ipc: int
    subsets: int
    seed: int
    kind: ClassVar[str] = "random class-balanced real"

    def select(
        self, dataset: ImageDataset, split: HoldoutSplit, hardness: torch.Tensor | None
    ) -> Initial:
        indices, labels, position = _draw(dataset, split, self.ipc, self.seed)
        sizes = [len(part) for part in torch.arange(self.ipc).tensor_split(self.subsets)]
        subset_ids = torch.bucketize(position, torch.tensor(sizes).cumsum(0), right=True)
        everything = torch.ones(len(indices), dtype=torch.bool)
        return Initial(indices, labels, everything, subset_ids, {"init": self.kind})


#: every kind, for the contract test and the docs
KINDS: tuple[type, ...] = (WindowInit, RandomInit, RealInit, SequentialInit)
