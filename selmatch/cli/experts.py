"""``selmatch experts``: train expert trajectories and gather difficulty scores."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selmatch.cli import common
from selmatch.experts import ExpertConfig, ExpertSet, train_experts

SUMMARY = "train expert trajectories on the real data; record Forgetting and EL2N scores"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experts",
        help=SUMMARY,
        description=(
            "Train K expert networks on the training set (minus the validation slice) and save "
            "each one's parameters after every epoch (epoch 0 = initialisation) as flat float32 "
            "vectors in safetensors files, with a JSON manifest. Forgetting counts are gathered "
            "from the training mini-batches themselves; EL2N from one inference pass after "
            "--el2n-epoch. Resumable: run the same command again and only missing experts "
            "are trained. Defaults follow the authors' code (SGD lr 0.01, no momentum, batch "
            "256, DSA) except the number of experts and epochs (the paper: 100 x 100)."
        ),
    )
    common.add_data_options(parser)
    common.add_model_options(parser)
    group = parser.add_argument_group("expert training")
    group.add_argument("--experts", type=int, default=2, help="number of experts (default: 2)")
    group.add_argument(
        "--epochs", type=int, default=20, help="epochs per expert, i.e. trajectory length "
        "(default: 20; the paper uses 100 with T+ = 80)",
    )  # fmt: skip
    group.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default: 0.01)")
    group.add_argument("--batch-size", type=int, default=256, help="mini-batch (default: 256)")
    group.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    group.add_argument(
        "--weight-decay", type=float, default=0.0, help="SGD weight decay (default: 0)"
    )
    group.add_argument(
        "--augment", default="dsa", choices=("none", "crop_flip", "dsa"),
        help="augmentation while training experts (default: dsa)",
    )  # fmt: skip
    group.add_argument(
        "--el2n-epoch", type=int, default=1,
        help="EL2N is measured after this epoch, in [1, --epochs] (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--per-class", type=int, default=None, metavar="N",
        help="train on a class-balanced part of N samples per class instead of the whole pool "
        "(a CPU budget knob; only those samples get scores; default: all)",
    )  # fmt: skip
    group.add_argument("--seed", type=int, default=0, help="expert i uses seed S+i (default: 0)")
    common.add_device_options(group)
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="output folder (default: runs/experts/<dataset>)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder")
    config = ExpertConfig(
        dataset=args.dataset, model=common.model_config(args), num_experts=args.experts,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, momentum=args.momentum,
        weight_decay=args.weight_decay, augment=args.augment, el2n_epoch=args.el2n_epoch,
        per_class=args.per_class, seed=args.seed, val_fraction=args.val_fraction,
        split_seed=args.split_seed,
    )  # fmt: skip
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
