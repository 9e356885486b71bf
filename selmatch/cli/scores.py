"""``selmatch scores``: show a score table, import an external per-sample score file, or
estimate consistency scores (a hold-out C-score estimate)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from selmatch.cli import common
from selmatch.config import ConfigError
from selmatch.consistency import ConsistencyConfig, estimate_consistency
from selmatch.scores import SCORES_FILE, ScoreTable, import_score_file

SUMMARY = (
    "summarise difficulty scores, import a per-sample .npy score file (e.g. C-scores), or "
    "estimate consistency scores"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scores",
        help=SUMMARY,
        description=(
            "Without --import or --estimate: summarise the score table in --scores (written by "
            "`selmatch experts`). With --import FILE.npy: check the file holds one finite number "
            "per training sample of --dataset (in the dataset's stored order) and add it to the "
            "table in --scores under --name, with its direction (--hardest). With --estimate "
            "consistency: estimate C-scores by hold-out (Jiang et al. 2021) — --networks "
            "networks, each trained on a class-balanced --train-fraction of the pool, every "
            "sample scored by the probability of its label under the networks that never saw it "
            "(each sample is held out at least twice); the result goes into the table in --scores"
            " as 'consistency' (higher = easier). Interrupted, the same command trains only the "
            "networks still missing. Use it with --score consistency."
        ),
    )
    parser.add_argument(
        "--scores", type=Path, default=None, metavar="DIR",
        help="score folder (default: runs/experts/<dataset>)",
    )  # fmt: skip
    parser.add_argument(
        "--import", dest="import_file", type=Path, default=None, metavar="FILE",
        help="a .npy file of one score per training sample to add to the table",
    )  # fmt: skip
    parser.add_argument(
        "--name", default="cscore", help="name of the imported score (default: cscore)"
    )
    parser.add_argument(
        "--hardest", choices=("high", "low"), default=None,
        help="which end of the imported score is hardest (default: low for cscore, else high)",
    )  # fmt: skip
    estimate = parser.add_argument_group("--estimate consistency")
    estimate.add_argument(
        "--estimate", choices=("consistency",), default=None,
        help="estimate a score instead of reading one: consistency (a hold-out C-score)",
    )  # fmt: skip
    defaults = ConsistencyConfig()
    estimate.add_argument(
        "--networks", type=int, default=defaults.num_networks, metavar="K",
        help="K networks; at least 2 x ceil(1 / (1 - s)) so every sample is held out twice "
        f"(default: {defaults.num_networks})",
    )  # fmt: skip
    estimate.add_argument(
        "--train-fraction", type=float, default=defaults.train_fraction, metavar="S",
        help=f"s: share of each class a network trains on (default: {defaults.train_fraction:g})",
    )  # fmt: skip
    estimate.add_argument(
        "--epochs", type=int, default=defaults.epochs,
        help=f"epochs per network (default: {defaults.epochs})",
    )  # fmt: skip
    estimate.add_argument(
        "--per-class", type=int, default=None, metavar="N",
        help="score only a class-balanced part of N images per class of the pool "
        "(default: the whole pool)",
    )  # fmt: skip
    estimate.add_argument(
        "--lr", type=float, default=defaults.lr,
        help=f"SGD lr, momentum 0.9, cosine schedule (default: {defaults.lr:g})",
    )  # fmt: skip
    estimate.add_argument(
        "--batch-size", type=int, default=defaults.batch_size,
        help=f"mini-batch size (default: {defaults.batch_size})",
    )  # fmt: skip
    estimate.add_argument(
        "--seed", type=int, default=0, help="seed of the splits and the networks (default: 0)"
    )
    common.add_device_options(estimate)
    common.add_model_options(parser, default_width=defaults.model.width)
    common.add_data_options(parser)
    parser.set_defaults(run=run)


def _estimate(args: argparse.Namespace, directory: Path) -> None:
    dataset = common.load_images(args)
    config = ConsistencyConfig(
        dataset=dataset.name, model=common.model_config(args), num_networks=args.networks,
        train_fraction=args.train_fraction, epochs=args.epochs, per_class=args.per_class,
        lr=args.lr, batch_size=args.batch_size, seed=args.seed, val_fraction=args.val_fraction,
        split_seed=args.split_seed,
    )  # fmt: skip
    print(dataset.describe())
    print(f"consistency: {config.describe()}, into {directory.resolve()}")
    started = time.perf_counter()
    estimate_consistency(dataset, config, directory, device=args.device,
                         progress=not args.no_progress)  # fmt: skip
    print(f"estimated in {time.perf_counter() - started:.0f} s (networks already in the folder "
          "were reused); per-network seconds are in consistency.json")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    directory = args.scores or Path("runs") / "experts" / common.slug(args.dataset)
    if args.estimate is not None and args.import_file is not None:
        raise ConfigError("--estimate and --import exclude each other; give one")
    if args.estimate is not None:
        _estimate(args, directory)
    if args.import_file is not None:
        dataset = common.load_images(args)
        values = import_score_file(args.import_file, num_samples=len(dataset.train_labels))
        higher = (args.hardest or ("low" if args.name == "cscore" else "high")) == "high"
        imported = ScoreTable(
            {args.name: values}, {args.name: higher},
            {"dataset": dataset.name, f"{args.name}_source": str(args.import_file.resolve())},
        )  # fmt: skip
        table = (
            ScoreTable.load(directory).merged(imported)
            if (directory / SCORES_FILE).is_file()
            else imported
        )
        if table.info.get("dataset") not in (None, dataset.name):
            raise ConfigError(f"--scores {directory} is for {table.info['dataset']}")
        table.save(directory)
        end = "high" if higher else "low"
        print(f"imported {args.name} ({end} = hard) into {directory.resolve()}")
    table = ScoreTable.load(directory)
    print(f"scores in {directory.resolve()} ({table.info.get('dataset')}):")
    for name, values in table.scores.items():
        finite = values[torch.isfinite(values)]
        direction = "higher = harder" if table.directions[name] else "lower = harder"
        print(
            f"  {name:<12} {len(finite):>7,} scored, min {float(finite.min()):.4g}, "
            f"median {float(finite.median()):.4g}, max {float(finite.max()):.4g} ({direction})"
        )
    return 0
