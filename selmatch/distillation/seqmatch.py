"""SeqMatch's retrained stage experts, as the authors' code makes them (METHOD.md, "SeqMatch").

Before stage k > 1 learns its subset S_k, new experts are trained. Each starts from a fresh
network, learns S_1 with S_1's learned lr, then S_1 ∪ S_2 with S_2's, ..., then
S_1 ∪ ... ∪ S_{k-1} with S_{k-1}'s (``prefix_epochs`` epochs each), and only then trains on the
real data while its trajectory is recorded. Stage k matches the start of *those* trajectories:
segments of training that begin where the earlier subsets have already brought the network, so
S_k is pushed toward what S_1..S_{k-1} leave out.

:func:`train_stage_expert` is a pure function (dataset, configs and the earlier subsets in, one
trajectory out), like :func:`selmatch.training.experts.train_one_expert`, so a search can run one
task per expert. :func:`cached_stage_experts` is the local driver: it keeps the experts in
``cache/<key>/``, an ordinary expert folder (loadable with :class:`ExpertSet`) plus
``stage.json`` saying what the key was made of. The key hashes the stage experts' settings, the
prefix epochs and the earlier subsets' content (images, labels, subset ids and learned lrs, bit
for bit): a rerun, or the resume of an interrupted distillation, finds the experts again, and a
changed S_1 gets new ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from selmatch.core.io import write_json
from selmatch.data import ImageDataset
from selmatch.training.experts import (
    INDICES,
    ExpertConfig,
    ExpertSet,
    Mapper,
    expert_training_indices,
    fill_expert_folder,
    record_expert,
)
from selmatch.training.models import build_model
from selmatch.training.params import ParamLayout
from selmatch.training.train import train_network

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class EarlierSubsets:
    """S_1..S_{k-1}, frozen: normalised images, labels, the subset of each image (0-based) and
    the lr each subset learned (``lrs[j]`` belongs to subset j)."""

    images: torch.Tensor
    labels: torch.Tensor
    subset_ids: torch.Tensor
    lrs: tuple[float, ...]

    def content_hash(self) -> str:
        """SHA-256 of the exact bytes of everything the stage experts learn from."""
        digest = hashlib.sha256()
        for tensor in (self.images.float(), self.labels.long(), self.subset_ids.long()):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(np.asarray(self.lrs, dtype=np.float64).tobytes())
        return digest.hexdigest()


def stage_expert_config(experts: ExpertConfig, num_experts: int, epochs: int) -> ExpertConfig:
    """The ordinary experts' settings (model, lr, batch, augmentation, data) with the stage's
    own number of experts and of recorded real-data epochs."""
    return experts.replace(
        num_experts=num_experts, epochs=epochs, el2n_epoch=min(experts.el2n_epoch, epochs)
    )


def learn_earlier_subsets(
    model: nn.Module,
    earlier: EarlierSubsets,
    config: ExpertConfig,
    epochs: int,
    *,
    seed: int,
    device: torch.device,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Train ``model`` in place on S_1, then S_1 ∪ S_2, ..., ``epochs`` epochs each with that
    step's subset's learned lr, otherwise with the experts' training settings."""
    for subset, lr in enumerate(earlier.lrs):
        rows = earlier.subset_ids <= subset
        train = replace(config.train_config(), epochs=epochs, lr=lr)
        train_network(
            model,
            earlier.images[rows],
            earlier.labels[rows],
            train,
            seed=seed,
            device=device,
            normalize=normalize,
        )


def train_stage_expert(
    dataset: ImageDataset,
    config: ExpertConfig,
    index: int,
    train_indices: torch.Tensor,
    earlier: EarlierSubsets,
    prefix_epochs: int,
    *,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[float], ParamLayout]:
    """Stage expert ``index``: a network initialised like ordinary expert ``index`` (seed
    ``config.seed + index``), taught the earlier subsets, then trained on the real images
    ``train_indices`` for ``config.epochs`` epochs. Its trajectory starts (``epoch_0000``) at
    the parameters the earlier subsets led to; no difficulty scores are gathered."""
    seed = config.seed + index
    model = build_model(config.model, dataset.image_shape, dataset.num_classes, seed=seed)
    learn_earlier_subsets(
        model, earlier, config, prefix_epochs, seed=seed, device=device, normalize=dataset.normalize
    )
    return record_expert(
        model,
        dataset,
        config,
        train_indices,
        seed=seed,
        device=device,
        progress=progress,
        desc=f"stage expert {index}",
        scores=False,
    )


def stage_key(config: ExpertConfig, earlier: EarlierSubsets, prefix_epochs: int) -> str:
    """The cache folder's name: what makes these stage experts what they are (more experts
    may be added to a folder later, so their number is not part of it)."""
    identity = {
        "experts": config.identity(),
        "prefix_epochs": prefix_epochs,
        "earlier_subsets": earlier.content_hash(),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"stage{len(earlier.lrs) + 1}-{digest[:16]}"


def cached_stage_experts(
    dataset: ImageDataset,
    config: ExpertConfig,
    earlier: EarlierSubsets,
    prefix_epochs: int,
    cache: Path,
    *,
    device: torch.device,
    progress: bool = True,
    mapper: Mapper = map,
) -> ExpertSet:
    """The stage experts for ``earlier`` from ``cache``, training (and caching) those missing,
    one after another or as ``mapper`` runs them (a search: parallel Ray tasks)."""
    folder = cache / stage_key(config, earlier, prefix_epochs)
    folder.mkdir(parents=True, exist_ok=True)
    train_indices, val_indices = expert_training_indices(dataset, config)
    save_file({"train_indices": train_indices, "val_indices": val_indices}, str(folder / INDICES))
    write_json(
        folder / STAGE_FILE,
        {
            "stage": len(earlier.lrs) + 1,
            "prefix_epochs": prefix_epochs,
            "earlier_subsets_sha256": earlier.content_hash(),
            "earlier_lrs": list(earlier.lrs),
            "earlier_sizes": torch.bincount(earlier.subset_ids).tolist(),
        },
    )
    layout = ParamLayout.of(build_model(config.model, dataset.image_shape, dataset.num_classes))
    train = partial(
        train_stage_expert,
        dataset,
        config,
        train_indices=train_indices,
        earlier=earlier,
        prefix_epochs=prefix_epochs,
        device=device,
    )
    desc = f"stage {len(earlier.lrs) + 1} experts"
    fill_expert_folder(folder, config, layout, train, progress=progress, desc=desc, mapper=mapper)
    return ExpertSet.load(folder)
