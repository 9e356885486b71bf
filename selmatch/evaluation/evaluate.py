"""Evaluation: train fresh networks on a small labelled set, report accuracy over seeds.

The protocol is the SelMatch paper's (Table 1): SGD momentum 0.9, weight decay 5e-4, lr 0.1,
batch 128, cosine schedule, a number of epochs that :func:`paper_epochs` derives from the
subset ratio. Each seed trains one network (initialisation, batch order and augmentation all
follow from it) and is scored on

- the *validation* slice held out from the training set (``HoldoutSplit.val``): the number
  every later choice (best window, best trial, best checkpoint) is made on;
- the *test* set: reported, never used to choose.

A SeqMatch set can be trained in one of two orders (:data:`EVAL_ORDERS`): ``union``, the whole
set at once like every other set (comparable across methods, the default), or ``sequential``,
as the SeqMatch authors evaluate: one network trains on S_1, then continues on S_1 ∪ S_2, ...,
each step with its stage's learned lr in place of ``train.lr`` and an equal share of the
budget's steps (:func:`evaluate_sequential`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from selmatch.core.config import Config, ConfigError, check_float, check_int, setting
from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.distillation.methods import SEQUENTIAL, UNION, find_method
from selmatch.sets.synthetic import SyntheticSet, SyntheticSetError
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import (
    TrainConfig,
    accuracy,
    check_device,
    resolve_device,
    train_network,
)

#: SelMatch's rule: evaluation trains for 25% of the steps of 200 epochs on the full set.
FULL_DATA_EPOCHS = 200
STEP_FRACTION = 0.25
#: How a SeqMatch set is trained at evaluation (module docstring).
EVAL_ORDERS = (UNION, SEQUENTIAL)
#: the ``--help`` section of the seeds and the device
SEEDS = "seeds and device"


def budget_epochs(n_synthetic: int, n_full: int, full_epochs: float) -> int:
    """Epochs over a set of ``n_synthetic`` images that take as many steps as ``full_epochs``
    epochs over ``n_full`` images (at equal batch size): a training budget that is the same
    for every set size, so sets of different sizes are compared at equal cost."""
    check_int("set_size", n_synthetic, 1)
    check_float("full_epochs", full_epochs, 1e-6, 1e6)
    return max(1, round(full_epochs * n_full / n_synthetic))


def paper_epochs(n_synthetic: int, n_full: int) -> int:
    """Epochs that give 25% of the steps of 200 full-data epochs (at equal batch size):
    1000 / 500 / 250 / 167 epochs at subset ratios of 5 / 10 / 20 / 30%."""
    return budget_epochs(n_synthetic, n_full, STEP_FRACTION * FULL_DATA_EPOCHS)


@dataclass(frozen=True)
class EvalConfig(Config):
    """Which network to train, how, and over how many seeds (``seed``, ``seed + 1``, ...)."""

    model: ModelConfig = setting(
        factory=ModelConfig,
        cli=False,
        paper="resnet18 (batch norm)",
        help="the network trained on the set (--model, --width, --depth, --norm)",
    )
    train: TrainConfig = setting(
        factory=TrainConfig,
        cli=False,
        help="how each network is trained (the SelMatch evaluation protocol by default)",
    )
    num_seeds: int = setting(
        3,
        flag="--seeds",
        metavar="N",
        paper="5",
        group=SEEDS,
        help="networks to train, with seeds S, S+1, ..., S+N-1, in [1, 1000]; the result is "
        "their mean ± std",
    )
    seed: int = setting(0, metavar="S", group=SEEDS, help="first seed, in [0, 2^31 - 1]")
    device: str = setting(
        "auto",
        group=SEEDS,
        help="where the networks train: cpu, cuda, cuda:1, ..., or auto (CUDA when present, "
        "else CPU)",
    )
    #: If set, ``train.epochs`` is replaced by the epochs that take as many steps as this many
    #: epochs over the full training pool (:func:`budget_epochs`; the paper's rule is 50).
    full_epochs: float | None = setting(
        None,
        cli=False,
        paper="50",
        help="if set, train for the steps of this many epochs over the full training pool, "
        "whatever the set's size, in place of train.epochs (a command's --epochs full:F)",
    )

    def __post_init__(self) -> None:
        check_int("num_seeds", self.num_seeds, 1, 1000)
        check_int("seed", self.seed, 0, 2**31 - 1)
        check_device("device", self.device)
        if self.full_epochs is not None:
            check_float("full_epochs", self.full_epochs, 1e-6, 1e6)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.num_seeds))

    def budget(self) -> str:
        """The training length in words: ``"300 epochs"`` or ``"the steps of 2 full-data
        epochs"``."""
        if self.full_epochs is None:
            return f"{self.train.epochs} epochs"
        return f"the steps of {self.full_epochs:g} full-data epochs"


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.pstdev(finite)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class EvalResult:
    """Per-seed accuracies (fractions in [0, 1]) and their mean ± std (population std)."""

    seeds: tuple[int, ...]
    test_accuracy: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    train_seconds: tuple[float, ...]
    epochs: int
    set_size: int
    #: SeqMatch sets: which order trained them (``union`` or ``sequential``), and for
    #: ``sequential`` the epochs of each step (S_1, S_1 ∪ S_2, ...); ``None`` for other sets
    eval_order: str | None = None
    stage_epochs: tuple[int, ...] | None = None

    @property
    def test_mean_std(self) -> tuple[float, float]:
        return _mean_std(list(self.test_accuracy))

    @property
    def val_mean_std(self) -> tuple[float, float]:
        return _mean_std(list(self.val_accuracy))

    def summary(self) -> str:
        test_mean, test_std = self.test_mean_std
        val_mean, val_std = self.val_mean_std
        text = f"test {100 * test_mean:.2f} ± {100 * test_std:.2f}%"
        if not math.isnan(val_mean):
            text += f", val {100 * val_mean:.2f} ± {100 * val_std:.2f}%"
        text += f" over {len(self.seeds)} seed(s), {self.epochs} epochs on {self.set_size} images"
        if self.eval_order == "sequential":
            steps = " + ".join(str(e) for e in self.stage_epochs or ())
            return f"{text}, sequential order (epochs per step {steps})"
        return f"{text}, {self.eval_order} order" if self.eval_order else text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (no NaN): a missing validation score is ``None``."""
        test_mean, test_std = self.test_mean_std
        val_mean, val_std = self.val_mean_std
        return {
            "seeds": list(self.seeds),
            "test_accuracy": [_json_number(v) for v in self.test_accuracy],
            "val_accuracy": [_json_number(v) for v in self.val_accuracy],
            "test_mean": _json_number(test_mean),
            "test_std": _json_number(test_std),
            "val_mean": _json_number(val_mean),
            "val_std": _json_number(val_std),
            "train_seconds": list(self.train_seconds),
            "epochs": self.epochs,
            "set_size": self.set_size,
            **(
                {}
                if self.eval_order is None
                else {
                    "eval_order": self.eval_order,
                    "stage_epochs": None if self.stage_epochs is None else list(self.stage_epochs),
                }
            ),
        }


@dataclass(frozen=True)
class _Phase:
    """One training call of an evaluation: which rows of the set (``None``: all), trained how."""

    rows: torch.Tensor | None
    train: TrainConfig

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.rows is None else tensor[self.rows]


def _whole_set_training(
    config: EvalConfig, set_size: int, dataset: ImageDataset, split: HoldoutSplit | None
) -> TrainConfig:
    """``config.train`` with the epochs the budget gives a set of ``set_size`` images."""
    if config.full_epochs is None:
        return config.train
    n_full = len(split.pool) if split is not None else len(dataset.train_labels)
    return replace(config.train, epochs=budget_epochs(set_size, n_full, config.full_epochs))


def evaluate_set(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    config: EvalConfig,
    *,
    split: HoldoutSplit | None = None,
    dsa_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> EvalResult:
    """Train one network per seed on ``(images, labels)`` and score it on the validation
    slice of ``split`` (if given) and on the test set.

    ``images`` may be uint8 real images (normalised per batch) or normalised floats.
    """
    train = _whole_set_training(config, len(labels), dataset, split)
    phases = [_Phase(None, train)]
    return _evaluate(images, labels, dataset, config, phases, split, dsa_mask, progress)


def evaluate_sequential(
    images: torch.Tensor,
    labels: torch.Tensor,
    subset_ids: torch.Tensor,
    stage_lrs: Sequence[float],
    dataset: ImageDataset,
    config: EvalConfig,
    *,
    split: HoldoutSplit | None = None,
    dsa_mask: torch.Tensor | None = None,
    progress: bool = False,
) -> EvalResult:
    """SeqMatch's own evaluation: each seed's network trains on S_1 with ``stage_lrs[0]``,
    then continues on S_1 ∪ S_2 with ``stage_lrs[1]``, ..., then on the whole set, and is
    scored at the end. The budget (``config``'s epochs over the whole set, or its
    ``full_epochs``) is shared in equal numbers of steps between the K steps: step k trains
    ``budget_epochs(|S_1 ∪ … ∪ S_k|, |set|, E / K)`` epochs, so the total cost is the union
    evaluation's. Each step is a fresh optimiser and schedule (the authors train each stage's
    network anew from the last one's weights); every other setting is ``config.train``'s."""
    stages = len(stage_lrs)
    if len(subset_ids) != len(labels) or stages == 0 or int(subset_ids.max()) != stages - 1:
        raise ConfigError(
            f"sequential evaluation needs one learned lr per subset: {stages} lr(s) for subset "
            f"ids 0..{int(subset_ids.max()) if len(subset_ids) else -1}"
        )
    whole = _whole_set_training(config, len(labels), dataset, split)
    phases = []
    for k, lr in enumerate(stage_lrs):
        rows = torch.nonzero(subset_ids <= k).flatten()
        epochs = budget_epochs(len(rows), len(labels), whole.epochs / stages)
        phases.append(_Phase(rows, replace(whole, epochs=epochs, lr=lr)))
    result = _evaluate(images, labels, dataset, config, phases, split, dsa_mask, progress)
    stage_epochs = tuple(phase.train.epochs for phase in phases)
    return replace(result, eval_order="sequential", stage_epochs=stage_epochs)


def sequential_stages(saved: SyntheticSet) -> tuple[torch.Tensor, tuple[float, ...]]:
    """The subset of every image and each stage's learned lr of a saved SeqMatch set, as
    :func:`evaluate_sequential` takes them; a one-line error for any other set."""
    manifest = saved.manifest
    method = find_method(manifest.get("method"))  # None: a set of no known method
    if method is None or SEQUENTIAL not in method.eval_orders:
        raise ConfigError(
            f"--eval-order sequential needs a SeqMatch set; this one is {manifest.get('method')}"
        )
    subset_ids, lrs = manifest.get("subset_ids"), manifest.get("stage_lrs")
    if not isinstance(subset_ids, list) or not isinstance(lrs, list) or not lrs:
        raise SyntheticSetError(
            "the set's manifest lacks subset_ids or stage_lrs (distilled before per-stage lrs "
            "were kept); distil it again or use --eval-order union"
        )
    return torch.tensor(subset_ids, dtype=torch.int64), tuple(float(lr) for lr in lrs)


def _evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    dataset: ImageDataset,
    config: EvalConfig,
    phases: list[_Phase],
    split: HoldoutSplit | None,
    dsa_mask: torch.Tensor | None,
    progress: bool,
) -> EvalResult:
    """Per seed: a fresh network trained through ``phases`` in order, then scored."""
    device = resolve_device(config.device)
    val_images = dataset.train_images[split.val] if split is not None else dataset.train_images[:0]
    val_labels = dataset.train_labels[split.val] if split is not None else dataset.train_labels[:0]
    norm = dataset.normalize
    tests, vals, seconds = [], [], []
    for index, seed in enumerate(config.seeds):
        model = build_model(config.model, dataset.image_shape, dataset.num_classes, seed=seed)
        spent = 0.0
        for phase in phases:
            spent += train_network(
                model,
                phase.of(images),
                phase.of(labels),
                phase.train,
                seed=seed,
                device=device,
                normalize=norm,
                dsa_mask=None if dsa_mask is None else phase.of(dsa_mask),
                progress=progress,
                desc=f"seed {seed} ({index + 1}/{config.num_seeds})",
            ).seconds
        tests.append(
            accuracy(model, dataset.test_images, dataset.test_labels, device=device, normalize=norm)
        )
        vals.append(accuracy(model, val_images, val_labels, device=device, normalize=norm))
        seconds.append(spent)
    epochs = _whole_set_training(config, len(labels), dataset, split).epochs
    return EvalResult(config.seeds, tuple(tests), tuple(vals), tuple(seconds), epochs, len(labels))
