"""``selmatch scores``: show a score table, or import an external per-sample score file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from selmatch.cli import common
from selmatch.config import ConfigError
from selmatch.data import load_dataset
from selmatch.scores import SCORES_FILE, ScoreTable, import_score_file

SUMMARY = "summarise difficulty scores, or import a per-sample .npy score file (e.g. C-scores)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scores",
        help=SUMMARY,
        description=(
            "Without --import: summarise the score table in --scores (written by `selmatch "
            "experts`). With --import FILE.npy: check the file holds one finite number per "
            "training sample of --dataset (in the dataset's stored order) and add it to the "
            "table in --scores under --name, with its direction (--hardest)."
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
    common.add_data_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    directory = args.scores or Path("runs") / "experts" / common.slug(args.dataset)
    if args.import_file is not None:
        dataset = load_dataset(args.dataset, data_root=args.data_root, image_size=args.image_size)
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
