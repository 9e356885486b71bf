"""The one training loop: experts, evaluations and window trials all train networks with it.

The whole training set sits on the device as one tensor (uint8 real images are normalised a
batch at a time); batches are drawn from a seeded ``torch.Generator``, so a seed is the whole
story of a run. Hooks see every batch's logits (for difficulty scores) and the model after
every epoch (for expert trajectories) at no extra pass over the data.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from selmatch.core.config import (
    Config,
    ConfigError,
    SelmatchError,
    check_choice,
    check_float,
    check_int,
    setting,
)
from selmatch.core.config import flag as flag_of
from selmatch.core.progress import progress_bar
from selmatch.training.augment import AUGMENTATIONS, DSAConfig, black, make_augmenter

SCHEDULES = ("cosine", "constant")
#: the ``--help`` section of the training settings
TRAINING = "training (SelMatch evaluation protocol by default)"


class TrainingDivergedError(SelmatchError, ArithmeticError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train one network. Defaults are the SelMatch evaluation protocol (Table 1):
    SGD momentum 0.9, weight decay 5e-4, lr 0.1, batch 128, cosine schedule."""

    epochs: int = setting(
        300,
        group=TRAINING,
        paper="'paper', a quarter of the steps of 200 full-data epochs",
        help="passes over the training set, in [1, 1000000]",
    )
    lr: float = setting(0.1, group=TRAINING, help="SGD learning rate, in (0, 100]")
    batch_size: int = setting(128, group=TRAINING, help="mini-batch size (images per SGD step)")
    momentum: float = setting(0.9, group=TRAINING, help="SGD momentum, in [0, 1)")
    weight_decay: float = setting(
        5e-4, group=TRAINING, help="SGD weight decay (L2 penalty), in [0, 1]"
    )
    schedule: str = setting(
        "cosine",
        choices=SCHEDULES,
        group=TRAINING,
        help="learning-rate schedule over all steps: cosine (annealed to 0) or constant",
    )
    augment: str = setting(
        "dsa",
        choices=AUGMENTATIONS,
        group=TRAINING,
        help="augmentation: none; crop_flip (pad 4 + horizontal flip); dsa (differentiable "
        "siamese augmentation); combined (DSA on the distilled part, crop_flip on the selected "
        "part, by the set's mask)",
    )
    dsa: DSAConfig = setting(
        factory=DSAConfig,
        cli=False,
        help="the DSA operations and their strengths, for augment dsa and combined "
        "(--dsa-strategy sets the operations)",
    )

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1, 1_000_000)
        check_float("lr", self.lr, 0.0, 100.0, low_open=True)
        check_int("batch_size", self.batch_size, 1, 1_000_000)
        check_float("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("augment", self.augment, AUGMENTATIONS)


class TrainHooks(Protocol):
    """Observers of a training run (both methods optional in spirit: implement no-ops)."""

    def on_batch(self, indices: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """After each forward pass: training indices of the batch and its (detached) logits."""

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """After each epoch (``epoch`` counts from 1)."""


@dataclass(frozen=True)
class TrainStats:
    steps: int
    final_loss: float
    seconds: float


_FORMS = "auto, cpu, cuda, cuda:N" + (", mps" if torch.backends.mps.is_built() else "")


def _device_form(device: object) -> re.Match[str] | None:
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device) if isinstance(device, str) else None
    return None if match is None or (match[2] is not None and match[1] != "cuda") else match


def check_device(name: str, value: object) -> str:
    """Return ``value`` if it names a device in a form :func:`resolve_device` reads (whether
    this machine has it is checked where the work runs: a search's head may lack the GPUs its
    workers have), else raise a one-line error naming the setting ``name``."""
    if value != "auto" and _device_form(value) is None:
        raise ConfigError(f"{flag_of(name)} must be one of {_FORMS}; got {value!r}", setting=name)
    return str(value)


def resolve_device(device: str = "auto", *, flag: str = "--device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and (where this
    torch is built with it) ``mps`` as named. Any other name, or a device this machine lacks,
    is a one-line :class:`~selmatch.core.config.ConfigError` naming ``flag`` (the search passes the
    setting's path)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = _device_form(device)
    if match is None:
        raise ConfigError(f"{flag} must be one of {_FORMS}; got {device!r}")
    if match[1] == "cuda":
        _check_cuda(device, None if match[2] is None else int(match[2]), flag)
    if match[1] == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"{flag} mps asked for, but torch sees no MPS device here; use {flag} cpu or auto"
        )
    return torch.device(device)


def _check_cuda(device: str, index: int | None, flag: str) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{flag} {device} asked for, but torch sees no CUDA device here (a CPU build of "
            f"torch, or no NVIDIA driver); use {flag} cpu or auto"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(
            f"{flag} {device} asked for, but this machine has {count} CUDA device(s): "
            f"cuda:0 to cuda:{count - 1}"
        )


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into batches. A trailing batch of one sample
    is dropped (BatchNorm cannot train on it) unless it is the only one."""
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def train_network(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dsa_mask: torch.Tensor | None = None,
    hooks: TrainHooks | None = None,
    progress: bool = False,
    desc: str = "train",
) -> TrainStats:
    """Train ``model`` in place on ``(images, labels)``.

    ``images`` are uint8 (then ``normalize`` is applied per batch) or already-normalised
    floats. ``dsa_mask`` marks the samples that get DSA under ``augment="combined"``.
    """
    if images.dtype == torch.uint8 and normalize is None:
        raise ValueError("uint8 images need a normalize function")
    model.to(device).train()
    images, labels = images.to(device), labels.to(device)
    mask = dsa_mask.to(torch.bool) if dsa_mask is not None else None
    generator = torch.Generator().manual_seed(seed)
    # crop+flip pads with black pixels, as torchvision's RandomCrop does before normalising
    fill = None if normalize is None else black(normalize, images.shape[1]).to(device)
    augment = make_augmenter(config.augment, config.dsa, fill=fill)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = len(epoch_batches(len(labels), config.batch_size, torch.Generator()))
    total_steps = steps_per_epoch * config.epochs
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if config.schedule == "cosine"
        else None
    )
    start, step, loss_value = time.perf_counter(), 0, math.nan
    bar = progress_bar(range(1, config.epochs + 1), desc=desc, enabled=progress)
    for epoch in bar:
        for batch in epoch_batches(len(labels), config.batch_size, generator):
            x = images[batch.to(device)]
            x = normalize(x) if x.dtype == torch.uint8 and normalize is not None else x
            x = augment(x, None if mask is None else mask[batch], generator)
            y = labels[batch.to(device)]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if hooks is not None:
                hooks.on_batch(batch, logits.detach(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"training diverged: loss is {loss_value} at epoch {epoch}; lower --lr"
            )
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if hooks is not None:
            hooks.on_epoch_end(epoch, model)
    return TrainStats(step, loss_value, time.perf_counter() - start)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy in eval mode, in batches of ``batch_size``."""
    if len(labels) == 0:
        return math.nan
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device)
        x = normalize(x) if x.dtype == torch.uint8 and normalize is not None else x
        prediction = model(x).argmax(dim=1)
        correct += int((prediction == labels[start : start + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / len(labels)
