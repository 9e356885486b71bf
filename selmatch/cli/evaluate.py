"""``selmatch evaluate``: train fresh networks on a small set and report test accuracy."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from selmatch.cli import common
from selmatch.core.artifacts import EVALUATION_KIND
from selmatch.core.config import ConfigError, check_float
from selmatch.core.io import write_json
from selmatch.data import HoldoutSplit, ImageDataset, balanced_subset, smallest_class_size
from selmatch.distillation.methods import UNION, find_method, saved_set_augment
from selmatch.evaluation.evaluate import (
    EVAL_ORDERS,
    EvalConfig,
    EvalResult,
    evaluate_sequential,
    evaluate_set,
    sequential_stages,
)
from selmatch.sets.synthetic import SyntheticSet

SUMMARY = "train networks on a random class-balanced subset or a saved set; report accuracy"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=SUMMARY,
        description=(
            "Train fresh networks on a small labelled set and report test accuracy (mean ± std "
            "over seeds) and accuracy on the validation slice held out from the training set. "
            "The set is either a random class-balanced subset of the training set (--ipc) or a "
            "saved set folder (--set, e.g. the output of a distillation)."
        ),
    )
    source = parser.add_argument_group("what to evaluate (one of)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--ipc",
        type=int,
        metavar="K",
        help="a random subset with K images per class, drawn from the training set minus the "
        "validation slice",
    )
    choice.add_argument(
        "--set", type=Path, metavar="DIR", help="a saved set folder (set.safetensors + manifest)"
    )
    source.add_argument(
        "--subset-seed",
        type=int,
        default=0,
        help="seed of the random subset drawn by --ipc (default: 0)",
    )
    common.add_data_options(parser)
    common.add_model_options(parser)
    common.add_train_options(
        parser,
        epochs_help="training epochs; 'paper' for the SelMatch rule (25%% of the steps of "
        "200 full-data epochs: 1000/500/250/167 epochs at 5/10/20/30%% of the data); or "
        "'full:F' for the steps of F epochs over the full training pool whatever the set "
        "size (e.g. full:2 = 200 epochs on 1%% of the data): equal cost for every set",
        default_augment="auto",
    )
    source.add_argument(
        "--eval-order",
        default="union",
        choices=EVAL_ORDERS,
        help="SeqMatch sets only. union: train on the whole set at once, like every other set "
        "(comparable across methods); sequential: as the SeqMatch authors, train on S1, then "
        "continue on S1+S2, ..., each step with its stage's learned lr (from the manifest, in "
        "place of --lr) and an equal share of the steps of --epochs (step k: E/K epochs' "
        "worth of steps over the whole set); the result says which order made it "
        "(default: union)",
    )
    common.add_seed_options(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to write the JSON result (default: runs/evaluate/<dataset>_<set>.json)",
    )
    parser.set_defaults(run=run)


def _load_set(args: argparse.Namespace) -> SyntheticSet:
    saved = SyntheticSet.load(args.set)
    if args.dataset != saved.manifest["dataset"]:
        if args.dataset != "fashion-mnist":  # the default: follow the set's dataset instead
            raise ConfigError(
                f"--dataset {args.dataset} differs from the set's dataset "
                f"{saved.manifest['dataset']}; drop --dataset to use the set's"
            )
        args.dataset = saved.manifest["dataset"]
    return saved


def run(args: argparse.Namespace) -> int:
    common.check_output(args.out, "file", writes="evaluation result")
    check_float("val_fraction", args.val_fraction, 0.0, 0.5)
    saved = _load_set(args) if args.set is not None else None
    stages = _sequential_stages(args, saved)
    dataset, split = common.load_data(args)
    if saved is not None:
        if (
            tuple(saved.manifest["mean"]) != dataset.mean
            or tuple(saved.manifest["std"]) != dataset.std
        ):
            raise ConfigError(f"--set {args.set} was normalised differently from {dataset.name}")
        images, labels, mask = saved.images, saved.labels, saved.distill_mask
        what = f"set {args.set} ({saved.manifest['method']}, {len(labels)} images, "
        what += f"{saved.num_distill} distilled)"
        name = common.slug(Path(args.set).resolve().name)
    else:
        available = smallest_class_size(dataset.train_labels, dataset.num_classes, split.pool)
        if not 1 <= args.ipc <= available:
            raise ConfigError(f"--ipc must be an integer in [1, {available}], got {args.ipc}")
        indices = balanced_subset(
            dataset.train_labels,
            dataset.num_classes,
            args.ipc,
            seed=args.subset_seed,
            among=split.pool,
        )
        images, labels, mask = dataset.train_images[indices], dataset.train_labels[indices], None
        what = f"random subset, {args.ipc} per class (subset seed {args.subset_seed})"
        name = f"random-ipc{args.ipc}-s{args.subset_seed}"
    augment = args.augment
    if augment == "auto":
        augment = saved_set_augment(mask)
    epochs = common.parse_epochs(args.epochs, len(labels), len(split.pool))
    config = common.eval_config(args, common.train_config(args, epochs=epochs, augment=augment))
    print(dataset.describe())
    print(f"evaluating {what}")
    lr = f"learned lr per stage {list(stages[1])}" if stages else f"lr {config.train.lr:g}"
    print(
        f"{config.model.describe()}, {epochs} epochs, {lr}, batch "
        f"{config.train.batch_size}, {augment} augmentation, seeds {list(config.seeds)}"
    )
    started = time.perf_counter()
    result = _evaluate(images, labels, mask, dataset, split, config, saved, stages, args)
    print(f"{dataset.name} {name}: {result.summary()}")
    out = args.out or Path("runs") / "evaluate" / f"{common.slug(dataset.name)}_{name}.json"
    payload = {
        "kind": EVALUATION_KIND,
        "dataset": dataset.name,
        "set": what,
        "config": config.to_dict(),
        "val_fraction": split.val_fraction,
        "split_seed": split.seed,
        "result": result.to_dict(),
        "wall_seconds": time.perf_counter() - started,
        "torch": torch.__version__,
    }
    print(f"result written to {write_json(out, payload).resolve()}")
    return 0


def _sequential_stages(
    args: argparse.Namespace, saved: SyntheticSet | None
) -> tuple[torch.Tensor, tuple[float, ...]] | None:
    """The subsets and learned lrs to train on in SeqMatch's sequential order, ``None`` for
    union; refuses the sequential order for any set but a SeqMatch one."""
    if args.eval_order != "sequential":
        return None
    if saved is None:
        raise ConfigError("--eval-order sequential needs a SeqMatch set (--set), not --ipc")
    return sequential_stages(saved)


def _evaluate(
    images: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    dataset: ImageDataset,
    split: HoldoutSplit,
    config: EvalConfig,
    saved: SyntheticSet | None,
    stages: tuple[torch.Tensor, tuple[float, ...]] | None,
    args: argparse.Namespace,
) -> EvalResult:
    """Sequential or union training; the result of a set that has several orders (SeqMatch's)
    names the order either way."""
    progress = not args.no_progress
    if stages is not None:
        subset_ids, lrs = stages
        return evaluate_sequential(
            images,
            labels,
            subset_ids,
            lrs,
            dataset,
            config,
            split=split,
            dsa_mask=mask,
            progress=progress,
        )
    result = evaluate_set(
        images, labels, dataset, config, split=split, dsa_mask=mask, progress=progress
    )
    method = find_method(saved.manifest["method"]) if saved is not None else None
    has_orders = method is not None and len(method.eval_orders) > 1
    return replace(result, eval_order=UNION) if has_orders else result
