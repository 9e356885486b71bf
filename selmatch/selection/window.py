"""The sliding window of difficulty (SelMatch, Algorithm 1) and its α split.

Every class's samples are ranked hardest first (by a difficulty score turned "higher is
harder", see :mod:`selmatch.difficulty.scores`); interleaving the classes' rankings round-robin
gives the global order of Algorithm 1, in which every window holds the same number of samples per
class. The window at β skips the hardest samples of each class and takes the next IPC.

How much β skips differs between the paper and the authors' code (``METHOD.md``):

- ``ipc-units`` (default; the authors' code, which produced Table 5): skip ``int(IPC · β)``
  samples per class — β is measured in units of the window;
- ``data-fraction`` (the paper's text): skip ``int(β · n_c)`` samples of each class of size
  ``n_c`` — β is the fraction of the data skipped.

Inside the window the harder ``IPC − int(IPC · α)`` per class form ``D_select`` (kept real and
frozen), the next ``int(IPC · α)`` form ``D_distill`` (updated by distillation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selmatch.core.config import Config, ConfigError, check_choice, check_float, check_int, setting
from selmatch.data import ImageDataset, indices_by_class
from selmatch.sets.synthetic import SyntheticSet

BETA_CONVENTIONS = ("ipc-units", "data-fraction")
BETA_CONVENTION_TEXT = {
    "ipc-units": "β in units of IPC: skip int(IPC·β) hardest per class (authors' code, Table 5)",
    "data-fraction": "β as a fraction of the data: skip int(β·n_c) hardest per class (paper text)",
}


def beta_convention_setting(group: str = "") -> Any:
    """The β convention as every config declares it (the set's, the sweep's, the search's):
    one default, the authors' code's reading (it reproduces Table 5), and one help text; a
    preset that reads β otherwise says so itself."""
    return setting(
        "ipc-units",
        choices=BETA_CONVENTIONS,
        group=group,
        help="how β is read: ipc-units skips int(IPC·β) hardest per class (the authors' code, "
        "Table 5); data-fraction skips that fraction of each class (the paper's text)",
    )


@dataclass(frozen=True)
class WindowSpec(Config):
    """Which window: IPC, β (window start), α (distilled share), the β convention."""

    ipc: int
    beta: float = 0.0
    alpha: float = 0.0
    beta_convention: str = "ipc-units"

    def __post_init__(self) -> None:
        check_int("ipc", self.ipc, 1)
        check_float("beta", self.beta, 0.0)
        check_float("alpha", self.alpha, 0.0, 1.0)
        check_choice("beta_convention", self.beta_convention, BETA_CONVENTIONS)

    def skip(self, class_size: int) -> int:
        """Samples skipped at the hard end of a class of ``class_size`` samples."""
        if self.beta_convention == "ipc-units":
            return int(self.ipc * self.beta)
        return int(self.beta * class_size)

    def max_beta(self, class_size: int) -> float:
        """The largest β whose window still fits in a class of ``class_size``."""
        room = class_size - self.ipc
        return room / self.ipc if self.beta_convention == "ipc-units" else room / class_size

    @property
    def num_distill(self) -> int:
        """``int(IPC · α)`` per class, as the authors' code splits."""
        return int(self.ipc * self.alpha)

    def describe(self) -> str:
        return (
            f"IPC {self.ipc}, β {self.beta:g} ({self.beta_convention}: "
            f"{BETA_CONVENTION_TEXT[self.beta_convention]}), α {self.alpha:g}"
        )


@dataclass(frozen=True)
class Window:
    """A selected window: training indices ordered by class, hardest first within a class,
    and the boolean masks of ``D_select`` and ``D_distill`` over them."""

    spec: WindowSpec
    indices: torch.Tensor
    labels: torch.Tensor
    select_mask: torch.Tensor
    distill_mask: torch.Tensor
    skipped: tuple[int, ...]


def class_rankings(
    hardness: torch.Tensor, labels: torch.Tensor, num_classes: int, among: torch.Tensor
) -> list[torch.Tensor]:
    """Per class, the scored training indices of ``among``, hardest first (ties: lower index
    first, so the order is deterministic)."""
    scored = among[torch.isfinite(hardness[among])]
    rankings = []
    for group in indices_by_class(labels, num_classes, scored):
        order = torch.sort(hardness[group], descending=True, stable=True).indices
        rankings.append(group[order])
    return rankings


def select_window(
    hardness: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    spec: WindowSpec,
    *,
    among: torch.Tensor,
) -> Window:
    """The window ``spec`` describes, among the training indices ``among`` (the pool)."""
    rankings = class_rankings(hardness, labels, num_classes, among)
    smallest = min(len(r) for r in rankings)
    if spec.ipc > smallest:
        raise ConfigError(f"--ipc must be an integer in [1, {smallest}], got {spec.ipc}")
    picks, select, distill, skipped = [], [], [], []
    for ranking in rankings:
        skip = spec.skip(len(ranking))
        if skip + spec.ipc > len(ranking):
            raise ConfigError(
                f"--beta must be in [0, {spec.max_beta(smallest):.4g}] for IPC {spec.ipc} with "
                f"{smallest} scored samples per class ({spec.beta_convention}), got {spec.beta:g}"
            )
        window = ranking[skip : skip + spec.ipc]
        n_select = spec.ipc - spec.num_distill
        picks.append(window)
        select.append(torch.arange(spec.ipc) < n_select)
        distill.append(torch.arange(spec.ipc) >= n_select)
        skipped.append(skip)
    indices = torch.cat(picks)
    return Window(
        spec, indices, labels[indices], torch.cat(select), torch.cat(distill), tuple(skipped)
    )


def window_set(
    dataset: ImageDataset, window: Window, *, score: str, **info: object
) -> SyntheticSet:
    """The window as a saved-set object (real images, normalised; mask = ``D_distill``)."""
    spec = window.spec
    return SyntheticSet(
        images=dataset.normalize(dataset.train_images[window.indices]),
        labels=window.labels.clone(),
        distill_mask=window.distill_mask.clone(),
        source_indices=window.indices.clone(),
        manifest={
            "dataset": dataset.name,
            "mean": list(dataset.mean),
            "std": list(dataset.std),
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "ipc": spec.ipc,
            "method": "window",
            "window": spec.to_dict(),
            "beta_convention_meaning": BETA_CONVENTION_TEXT[spec.beta_convention],
            "score": score,
            "skipped_per_class": list(window.skipped),
            **info,
        },
    )
