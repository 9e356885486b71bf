"""Class-balanced indexing: per-class index lists, k-per-class subsets, the validation hold-out.

Every index here refers to the dataset's *training* set, in its stored order, so that scores,
windows and subsets computed at different times line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selmatch.core.config import ConfigError, check_float, check_int


def indices_by_class(
    labels: torch.Tensor, num_classes: int, among: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """For each class, the (ascending) training indices of its samples, optionally only
    those listed in ``among``."""
    candidates = torch.arange(len(labels)) if among is None else among.sort().values
    candidate_labels = labels[candidates]
    return [candidates[candidate_labels == c] for c in range(num_classes)]


def smallest_class_size(
    labels: torch.Tensor, num_classes: int, among: torch.Tensor | None = None
) -> int:
    return min(len(idx) for idx in indices_by_class(labels, num_classes, among))


def balanced_subset(
    labels: torch.Tensor,
    num_classes: int,
    per_class: int,
    *,
    seed: int,
    among: torch.Tensor | None = None,
) -> torch.Tensor:
    """A random subset with exactly ``per_class`` samples of every class, drawn without
    replacement from ``among`` (default: all). Ordered by class, then by draw."""
    groups = indices_by_class(labels, num_classes, among)
    available = min(len(g) for g in groups)
    check_int("ipc", per_class, 1, available)
    generator = torch.Generator().manual_seed(seed)
    picks = [g[torch.randperm(len(g), generator=generator)[:per_class]] for g in groups]
    return torch.cat(picks)


@dataclass(frozen=True)
class HoldoutSplit:
    """The training set split into a ``pool`` (what experts, scores, windows and subsets may
    use) and a class-balanced ``val`` slice used for every model-selection decision."""

    pool: torch.Tensor
    val: torch.Tensor
    val_fraction: float
    seed: int


#: the fewest validation images per class (where the class has twice as many)
VAL_FLOOR = 10


def holdout_split(
    labels: torch.Tensor, num_classes: int, *, val_fraction: float = 0.02, seed: int = 0
) -> HoldoutSplit:
    """Hold out ``val_fraction`` of every class for validation, and at least ``VAL_FLOOR``
    images of it (half of a class smaller than twice that).

    The test set is never used to choose anything; this slice of the *training* set is. The
    floor keeps a small dataset's validation accuracy from moving in steps coarser than the
    differences the search has to tell apart (2 % of 140 images per class would be 3: steps
    of 3.3 points per class). ``val_fraction = 0`` disables it (then validation accuracy is
    not available).
    """
    check_float("val_fraction", val_fraction, 0.0, 0.5)
    groups = indices_by_class(labels, num_classes)
    if val_fraction == 0:
        return HoldoutSplit(torch.arange(len(labels)), torch.empty(0, dtype=torch.int64), 0.0, seed)
    generator = torch.Generator().manual_seed(seed)
    val_parts = []
    for label, group in enumerate(groups):
        if len(group) < 2:  # no fraction can leave one for training
            raise ConfigError(
                f"class {label} has {len(group)} training image(s); holding out validation "
                "images needs at least 2 of every class (or --val-fraction 0)"
            )
        count = max(1, round(val_fraction * len(group)), min(VAL_FLOOR, len(group) // 2))
        if count >= len(group):
            raise ConfigError(
                f"--val-fraction {val_fraction:g} leaves no training sample in a class of "
                f"{len(group)}; use a value below {(len(group) - 1) / len(group):.3f}"
            )
        val_parts.append(group[torch.randperm(len(group), generator=generator)[:count]])
    val = torch.cat(val_parts).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return HoldoutSplit(torch.nonzero(keep).flatten(), val, val_fraction, seed)
