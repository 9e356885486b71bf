"""Consistency scores: a hold-out estimate of the C-score (Jiang et al., 2021).

A sample's C-score is its expected accuracy under a network trained on the rest of the data
*without* it. It is estimated here with K networks, each trained on a class-balanced fraction
s of the scored pool; a sample's score is the softmax probability of its true label, averaged
over the networks that held it out. Higher = easier (the C-score's own direction), so the
score's direction is "lower is harder" (:data:`selmatch.difficulty.score_kinds.CONSISTENCY`).

**The splits.** With s the training fraction, a *round* is F = ⌈1 / (1 − s)⌉ networks. Each
round draws a fresh random order of every class, and its network j holds out the j-th run of
h = max(n_c − round(s · n_c), ⌈n_c / F⌉) consecutive positions (wrapping around), so the F
held-out runs of a round cover the class: every sample is held out at least once per round,
a few twice. K must hold at least two rounds (K ≥ 2F), so every scored sample is held out at
least twice; the networks of an unfinished last round add further hold-outs to some samples.
A sample held out by fewer than :data:`MIN_HOLDOUTS` networks — which the design rules out,
but a caller combining an incomplete list of networks can cause — gets NaN, and NaN samples are
left out of every window (as the validation slice is).

**On disk** (``directory/``, resumable, pickle-free): ``consistency.json`` (the config, the
seconds each network took) and one ``network_NNN.safetensors`` per finished network
(``held_out`` indices and their ``probability``); :func:`estimate_consistency` trains only the
missing networks, and writes the score into the folder's score table (``scores.safetensors``)
under the name ``consistency``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from selmatch.core.config import (
    Config,
    ConfigError,
    check_float,
    check_int,
    check_resumable,
    setting,
)
from selmatch.core.io import atomic_write, read_json, read_safetensors, versions, write_json
from selmatch.core.progress import progress_bar
from selmatch.data import (
    ImageDataset,
    balanced_subset,
    holdout_split,
    indices_by_class,
    smallest_class_size,
)
from selmatch.data.identity import DATA_KEY, check_data, data_identity
from selmatch.difficulty.score_kinds import CONSISTENCY
from selmatch.difficulty.scores import SCORES_FILE, ScoreTable
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import TrainConfig, resolve_device, train_network

#: the score's name in a table (:data:`selmatch.difficulty.score_kinds.CONSISTENCY`)
SCORE_NAME = CONSISTENCY.name
MIN_HOLDOUTS = 2
MANIFEST = "consistency.json"
#: the ``--help`` sections of its settings
ESTIMATE, DATA = "--estimate consistency", "data"


@dataclass(frozen=True)
class ConsistencyConfig(Config):
    """How the consistency score is estimated: ``num_networks`` (K) networks, each trained for
    ``epochs`` on a ``train_fraction`` (s) of the scored pool (all of it, or a class-balanced
    ``per_class`` part of it). Training follows the evaluation protocol (SGD momentum 0.9, lr
    0.1, cosine, weight decay 5e-4) with crop+flip, which a short run learns fastest with."""

    dataset: str = setting(
        "fashion-mnist",
        group=DATA,
        metavar="NAME",
        help="the data scored: fashion-mnist, cifar10, cifar100, tiny-imagenet or "
        "imagefolder:<path>",
    )
    model: ModelConfig = setting(
        factory=lambda: ModelConfig(width=32),
        cli=False,
        help="the networks' architecture (--model, --width, --depth, --norm; width 32 by default)",
    )
    num_networks: int = setting(
        4,
        flag="--networks",
        symbol="K",
        group=ESTIMATE,
        help="networks trained, in [2 x ceil(1 / (1 - s)), 10000], so that every sample is "
        "held out at least twice",
    )
    train_fraction: float = setting(
        0.5,
        symbol="s",
        metavar="S",
        group=ESTIMATE,
        help="share of each class a network trains on, in (0, 0.95]",
    )
    epochs: int = setting(6, group=ESTIMATE, help="epochs per network, in [1, 10000]")
    per_class: int | None = setting(
        None,
        metavar="N",
        group=ESTIMATE,
        help="score only a class-balanced part of N ≥ 2 images per class of the pool, from "
        "which the windows are then drawn (default: the whole pool)",
    )
    lr: float = setting(
        0.1,
        group=ESTIMATE,
        help="SGD learning rate (momentum 0.9, weight decay 5e-4, cosine schedule)",
    )
    batch_size: int = setting(256, group=ESTIMATE, help="mini-batch size")
    augment: str = setting(
        "crop_flip",
        cli=False,
        help="augmentation of the networks' training (crop_flip: what a short run learns "
        "fastest with)",
    )
    seed: int = setting(
        0, group=ESTIMATE, help="seed of the splits and of the networks, network k using seed + k"
    )
    val_fraction: float = setting(
        0.02,
        metavar="F",
        group=DATA,
        help="fraction of each class of the training set held out as the validation slice, "
        "which is never scored",
    )
    split_seed: int = setting(0, metavar="S", group=DATA, help="seed of the validation hold-out")

    def __post_init__(self) -> None:
        check_float("train_fraction", self.train_fraction, 0.0, 0.95, low_open=True)
        check_int("epochs", self.epochs, 1, 10_000)
        if self.per_class is not None:
            check_int("per_class", self.per_class, 2)
        check_int("seed", self.seed, 0, 2**31 - 1)
        per_round = self.networks_per_round
        check_int("num_networks", self.num_networks, MIN_HOLDOUTS * per_round, 10_000)
        self.train_config()  # lr, batch size and augmentation are checked where defined

    @property
    def networks_per_round(self) -> int:
        """F = ⌈1 / (1 − s)⌉: the networks whose held-out parts cover every sample once."""
        return math.ceil(1.0 / (1.0 - self.train_fraction) - 1e-9)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, augment=self.augment
        )

    def describe(self) -> str:
        part = "the pool" if self.per_class is None else f"{self.per_class} images/class"
        return (
            f"{self.num_networks} x {self.model.describe()}, {self.epochs} epochs on "
            f"{self.train_fraction:g} of {part}"
        )


def scored_indices(dataset: ImageDataset, config: ConsistencyConfig) -> torch.Tensor:
    """The training indices that get a score: the pool (training set minus the validation
    slice), or a class-balanced ``per_class`` part of it."""
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
    )
    if config.per_class is None:
        return split.pool
    available = smallest_class_size(dataset.train_labels, dataset.num_classes, split.pool)
    per_class = min(config.per_class, available)
    chosen = balanced_subset(
        dataset.train_labels, dataset.num_classes, per_class, seed=config.seed, among=split.pool
    )
    return chosen.sort().values


def held_out_indices(
    labels: torch.Tensor,
    num_classes: int,
    scored: torch.Tensor,
    config: ConsistencyConfig,
    network: int,
) -> torch.Tensor:
    """The scored indices network ``network`` never trains on (see the module's splits)."""
    per_round = config.networks_per_round
    round_, slot = divmod(network, per_round)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + round_)
    parts = []
    for group in indices_by_class(labels, num_classes, scored):
        n = len(group)
        order = group[torch.randperm(n, generator=generator)]
        width = max(n - round(config.train_fraction * n), math.ceil(n / per_round))
        positions = (slot * width + torch.arange(width)) % n
        parts.append(order[positions.unique()])
    return torch.cat(parts).sort().values


def train_consistency_network(
    dataset: ImageDataset,
    config: ConsistencyConfig,
    network: int,
    *,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Any]:
    """Train network ``network`` on its part of the pool; the probability of the true label
    of every sample it held out (eval mode), and its seconds."""
    started = time.perf_counter()
    labels = dataset.train_labels
    scored = scored_indices(dataset, config)
    held_out = held_out_indices(labels, dataset.num_classes, scored, config, network)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_out] = False
    train_indices = scored[keep[scored]]
    seed = config.seed + network
    model = build_model(config.model, dataset.image_shape, dataset.num_classes, seed=seed)
    train_network(
        model,
        dataset.train_images[train_indices],
        labels[train_indices],
        config.train_config(),
        seed=seed,
        device=device,
        normalize=dataset.normalize,
        progress=progress,
        desc=f"network {network}",
    )
    probability = true_label_probability(model, dataset, held_out, device=device)
    return {
        "held_out": held_out,
        "probability": probability,
        "seconds": time.perf_counter() - started,
    }


@torch.no_grad()
def true_label_probability(
    model: torch.nn.Module,
    dataset: ImageDataset,
    indices: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 1024,
) -> torch.Tensor:
    """softmax(f(x))[y] of the training samples ``indices`` (float64), in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        x = dataset.normalize(dataset.train_images[chunk].to(device))
        probabilities = F.softmax(model(x).double(), dim=1)
        out.append(probabilities.gather(1, dataset.train_labels[chunk].to(device)[:, None])[:, 0])
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.float64)


def combine_consistency(
    num_samples: int, results: Sequence[Mapping[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, hold-out count) per training sample: the mean held-out probability, NaN where
    fewer than :data:`MIN_HOLDOUTS` networks held the sample out."""
    total = torch.zeros(num_samples, dtype=torch.float64)
    count = torch.zeros(num_samples, dtype=torch.int64)
    for result in results:
        index = result["held_out"].to(torch.int64)
        total.index_add_(0, index, result["probability"].to(torch.float64))
        count.index_add_(0, index, torch.ones_like(index))
    score = total / count.clamp(min=1)
    score[count < MIN_HOLDOUTS] = math.nan
    return score, count


def network_file(directory: Path, network: int) -> Path:
    return directory / f"network_{network:03d}.safetensors"


def save_network(directory: Path, network: int, result: Mapping[str, Any]) -> None:
    tensors = {
        "held_out": result["held_out"].to(torch.int64).contiguous(),
        "probability": result["probability"].to(torch.float64).contiguous(),
    }
    atomic_write(network_file(directory, network), partial(save_file, tensors))


def prepare_directory(
    directory: Path, config: ConsistencyConfig, dataset: ImageDataset | None = None
) -> dict[str, float]:
    """Check ``directory`` holds networks of ``config`` (or none); the seconds of those done."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    if not path.is_file():
        return {}
    saved = read_json(path)
    check_resumable(
        ConsistencyConfig.from_dict(saved["config"]),
        config,
        f"--out {directory} holds consistency networks made with other settings ({{changed}}); "
        "use another folder or the same settings to resume",
        may_change=("num_networks",),
    )
    if dataset is not None:
        check_data(saved.get(DATA_KEY), dataset, f"--scores {directory} holds consistency networks")
    return {str(k): float(v) for k, v in saved.get("seconds", {}).items()}


def write_manifest(
    directory: Path,
    config: ConsistencyConfig,
    seconds: Mapping[str, float],
    data: Mapping[str, Any] | None = None,
) -> None:
    write_json(
        directory / MANIFEST,
        {
            "kind": "selmatch-consistency",
            "config": config.to_dict(),
            "seconds": dict(seconds),
            "total_seconds": sum(seconds.values()),
            "versions": versions(),
            **({DATA_KEY: dict(data)} if data is not None else {}),
        },
    )


def finish(directory: Path, dataset: ImageDataset, config: ConsistencyConfig) -> ScoreTable:
    """Combine the saved networks into the score and merge it into the folder's table."""
    results = [read_safetensors(network_file(directory, k)) for k in range(config.num_networks)]
    score, count = combine_consistency(len(dataset.train_labels), results)
    scored = count > 0
    table = ScoreTable(
        {SCORE_NAME: score},
        {SCORE_NAME: CONSISTENCY.higher_is_harder},
        {
            "dataset": dataset.name,
            "consistency": config.describe(),
            "consistency_min_holdouts": int(count[scored].min()) if bool(scored.any()) else 0,
            "val_fraction": config.val_fraction,
            "split_seed": config.split_seed,
            DATA_KEY: data_identity(dataset),
        },
    )
    if (directory / SCORES_FILE).is_file():
        table = ScoreTable.load(directory).merged(table)
    table.save(directory)
    return table


def estimate_consistency(
    dataset: ImageDataset,
    config: ConsistencyConfig,
    directory: str | Path,
    *,
    device: str = "auto",
    progress: bool = True,
) -> ScoreTable:
    """Train the missing networks of ``directory`` one after another and write the score."""
    if dataset.name != config.dataset:
        raise ConfigError(f"config is for {config.dataset}, dataset is {dataset.name}")
    directory = Path(directory)
    seconds = prepare_directory(directory, config, dataset)
    data = data_identity(dataset)
    write_manifest(directory, config, seconds, data)
    torch_device = resolve_device(device)
    todo = [k for k in range(config.num_networks) if not network_file(directory, k).is_file()]
    for network in progress_bar(todo, desc="consistency networks", enabled=progress):
        result = train_consistency_network(
            dataset, config, network, device=torch_device, progress=progress
        )
        save_network(directory, network, result)
        seconds[str(network)] = result["seconds"]
        write_manifest(directory, config, seconds, data)
    return finish(directory, dataset, config)
