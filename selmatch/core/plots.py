"""Pictures users expect: image grids of a set, and accuracy curves over β or α."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed


def save_set_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[tuple[str, torch.Tensor]],
    class_names: Sequence[str],
    path: str | Path,
    *,
    per_cell: int = 4,
    max_classes: int = 20,
) -> Path:
    """A grid with one column per class and one band of rows per group (e.g. ``D_select``,
    ``D_distill``): up to ``per_cell`` images of each class and group. ``images`` are in
    [0, 1] (denormalised), ``groups`` pairs a name with a boolean mask over the images."""
    classes = list(range(min(len(class_names), max_classes)))
    bands = [(name, mask) for name, mask in groups if bool(mask.any())]
    rows = max(1, len(bands) * per_cell)
    figure = Figure(figsize=(0.9 * len(classes) + 1.2, 0.9 * rows + 0.6))
    axes = figure.subplots(rows, len(classes), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for band, (name, mask) in enumerate(bands):
        for column, c in enumerate(classes):
            chosen = torch.nonzero(mask & (labels == c)).flatten()[:per_cell]
            for offset, index in enumerate(chosen.tolist()):
                axis = axes[band * per_cell + offset][column]
                picture = images[index].permute(1, 2, 0).numpy()
                axis.imshow(
                    picture.squeeze(-1) if picture.shape[-1] == 1 else picture,
                    cmap="gray",
                    vmin=0.0,
                    vmax=1.0,
                )
            if band == 0:
                axes[0][column].set_title(str(class_names[c])[:12], fontsize=7)
        axes[band * per_cell][0].text(
            -0.15,
            0.5,
            name,
            transform=axes[band * per_cell][0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=8,
        )
    figure.tight_layout(pad=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def save_curve(
    xs: Sequence[float],
    curves: Sequence[tuple[str, Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    baselines: Sequence[tuple[str, float]] = (),
    best_x: float | None = None,
    ylabel: str = "accuracy (%)",
    scale: float = 100.0,
    marker: str = "o",
) -> Path:
    """Curves (by default accuracy in %) against a hyperparameter, with horizontal dashed
    baselines (the i-th baseline takes the colour of the i-th curve)."""
    figure = Figure(figsize=(5.5, 3.6))
    axis = figure.subplots()
    for name, ys in curves:
        axis.plot(list(xs), [scale * y for y in ys], marker=marker or None, label=name)
    for index, (name, value) in enumerate(baselines):
        axis.axhline(scale * value, linestyle="--", color=f"C{index}", alpha=0.7, label=name)
    if best_x is not None:
        axis.axvline(best_x, linestyle=":", color="black", label=f"best = {best_x:g}")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
