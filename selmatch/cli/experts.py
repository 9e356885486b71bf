"""``selmatch experts``: train expert trajectories and gather difficulty scores."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selmatch.cli import common, options
from selmatch.training.experts import EXPERT_TRAINING, ExpertConfig, ExpertSet, train_experts

SUMMARY = "train expert trajectories on the real data; record Forgetting and EL2N scores"
#: the "expert training" options, each declared once, in ExpertConfig (the data and network
#: options are the data and network options of every command)
EXPERT_OPTIONS = (
    "num_experts",
    "epochs",
    "lr",
    "batch_size",
    "momentum",
    "weight_decay",
    "augment",
    "el2n_epoch",
    "per_class",
    "seed",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experts",
        help=SUMMARY,
        description=(
            "Train --num-experts expert networks on the training set (minus the validation "
            "slice) and save each one's parameters after every epoch (epoch 0 = initialisation) "
            "as flat float32 vectors in safetensors files, with a JSON manifest. Forgetting "
            "counts are gathered from the training mini-batches themselves; EL2N from one "
            "inference pass after "
            "--el2n-epoch. Resumable: run the same command again and only missing experts "
            "are trained. Defaults follow the authors' code (SGD lr 0.01, no momentum, batch "
            "256) except the number of experts and epochs (the paper: 100 x 100) and the "
            "augmentation (DSA, as MTT's experts; the authors' code in effect trains without)."
        ),
    )
    common.add_data_options(parser)
    common.add_model_options(parser)
    groups = options.add_options(parser, ExpertConfig, EXPERT_OPTIONS)
    group = groups[EXPERT_TRAINING]
    common.add_device_options(group)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: runs/experts/<dataset>)",
    )
    options.add_moved(
        parser,
        "--experts",
        "is an expert folder in every other command; the number of experts is --num-experts N",
    )
    parser.set_defaults(run=run)


def expert_config(args: argparse.Namespace, dataset: str) -> ExpertConfig:
    """The experts' settings the options give, for ``dataset``."""
    return ExpertConfig(
        dataset=dataset,
        model=common.model_config(args),
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        **options.values(args, EXPERT_OPTIONS),
    )


def run(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder", writes="experts folder")
    config = expert_config(args, args.dataset)
    dataset, _ = common.load_data(args)
    out = args.out or Path("runs") / "experts" / common.slug(dataset.name)
    print(dataset.describe())
    print(
        f"{config.num_experts} expert(s): {config.model.describe()}, {config.epochs} epochs, "
        f"lr {config.lr:g}, batch {config.batch_size}, {config.augment} augmentation"
    )
    started = time.perf_counter()
    train_experts(dataset, config, out, device=args.device, progress=not args.no_progress)
    experts = ExpertSet.load(out)
    size = experts.layout.numel * 4 * (config.epochs + 1)  # float32 vectors, epochs 0..E
    print(
        f"{len(experts.finished)} expert(s) in {out.resolve()} ({experts.layout.numel:,} "
        f"parameters, {size / 2**20:.1f} MiB per trajectory, "
        f"{experts.manifest['mean_epoch_seconds']:.1f} s per epoch; "
        f"this run {time.perf_counter() - started:.0f} s)"
    )
    print(f"scores (forgetting, el2n) in {(out / 'scores.safetensors').resolve()}")
    return 0
