"""Coverage of the real data by a synthetic set (SelMatch, Section 3.2).

In the feature space of a trained network, a real sample is *covered* when some synthetic
sample lies within radius r of it; r is the mean nearest-neighbour distance among real
training samples. Coverage = the covered fraction, reported overall and for the easy and
hard halves of the real samples by a difficulty score.

The feature network here is an expert's final epoch (trained on the real pool, free to
have): its BatchNorm statistics are re-estimated on real training images (trajectories keep
parameters only), then penultimate-layer features are taken in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selmatch.data import ImageDataset
from selmatch.training.experts import ExpertSet
from selmatch.training.models import build_model


def nearest_distances(
    queries: torch.Tensor, points: torch.Tensor, *, exclude_self: bool = False, chunk: int = 2048
) -> torch.Tensor:
    """For each query, the Euclidean distance to its nearest point (optionally ignoring the
    point at the same index, when queries and points are the same set)."""
    out = []
    for start in range(0, len(queries), chunk):
        # Exact differences, not the matrix-product shortcut: results must not depend on chunking.
        distances = torch.cdist(
            queries[start : start + chunk], points, compute_mode="donot_use_mm_for_euclid_dist"
        )
        if exclude_self:
            rows = torch.arange(distances.shape[0])
            distances[rows, rows + start] = float("inf")
        out.append(distances.min(dim=1).values)
    return torch.cat(out)


def coverage_fraction(real: torch.Tensor, synthetic: torch.Tensor, radius: float) -> float:
    """Fraction of ``real`` feature vectors within ``radius`` of some ``synthetic`` one."""
    if len(real) == 0:
        return float("nan")
    return float((nearest_distances(real, synthetic) <= radius).double().mean())


def mean_nn_radius(real_train: torch.Tensor) -> float:
    """r: the mean distance from each real training feature to its nearest other one."""
    return float(nearest_distances(real_train, real_train, exclude_self=True).mean())


@dataclass(frozen=True)
class CoverageReport:
    radius: float
    test: float
    train: float
    train_easy: float
    train_hard: float
    num_train: int

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@torch.no_grad()
def expert_features(
    experts: ExpertSet,
    dataset: ImageDataset,
    calibration: torch.Tensor,
    device: torch.device,
    *,
    expert: int = 0,
) -> nn.Module:
    """Expert ``expert`` at its last epoch, BatchNorm statistics re-estimated on the real
    ``calibration`` images, in eval mode."""
    model = build_model(experts.config.model, dataset.image_shape, dataset.num_classes)
    experts.layout.load_into(model, experts.trajectory(expert)[-1])
    model.to(device)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    for batch in calibration.split(512):
        model(dataset.normalize(dataset.train_images[batch].to(device)))
    return model.eval()


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, normalize: object, device: torch.device
) -> torch.Tensor:
    out = []
    for batch in images.split(1024):
        x = batch.to(device)
        x = normalize(x) if x.dtype == torch.uint8 else x  # type: ignore[operator]
        out.append(model.embed(x).float().cpu())  # type: ignore[operator]
    return torch.cat(out)


def set_coverage(
    synthetic_images: torch.Tensor,
    dataset: ImageDataset,
    experts: ExpertSet,
    hardness: torch.Tensor,
    pool: torch.Tensor,
    *,
    sample: int = 5000,
    seed: int = 0,
    device: torch.device,
) -> CoverageReport:
    """Coverage of the test set and of a random ``sample`` of the training pool (split into
    easy and hard halves by ``hardness``, higher = harder) by ``synthetic_images``."""
    generator = torch.Generator().manual_seed(seed)
    scored = pool[torch.isfinite(hardness[pool])]
    chosen = scored[torch.randperm(len(scored), generator=generator)[:sample]]
    model = expert_features(experts, dataset, chosen, device)
    real_train = embed(model, dataset.train_images[chosen], dataset.normalize, device)
    real_test = embed(model, dataset.test_images, dataset.normalize, device)
    synthetic = embed(model, synthetic_images, dataset.normalize, device)
    radius = mean_nn_radius(real_train)
    order = torch.argsort(hardness[chosen], stable=True)  # easiest first
    easy, hard = order[: len(order) // 2], order[len(order) // 2 :]
    return CoverageReport(
        radius=radius,
        test=coverage_fraction(real_test, synthetic, radius),
        train=coverage_fraction(real_train, synthetic, radius),
        train_easy=coverage_fraction(real_train[easy], synthetic, radius),
        train_hard=coverage_fraction(real_train[hard], synthetic, radius),
        num_train=len(chosen),
    )
