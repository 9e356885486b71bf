"""``selmatch scores``: show a score table, import an external per-sample score file, or
estimate consistency scores (a hold-out C-score estimate)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from selmatch.cli import common, options
from selmatch.core.config import ConfigError
from selmatch.data import ImageDataset
from selmatch.data.identity import DATA_KEY, data_identity
from selmatch.difficulty.score_kinds import CSCORE, EstimatedScore, imported_direction, of_kind
from selmatch.difficulty.scores import SCORES_FILE, ScoreTable, import_score_file
from selmatch.selection.consistency import ESTIMATE, ConsistencyConfig, estimate_consistency

SUMMARY = (
    "summarise difficulty scores, import a per-sample .npy score file (e.g. C-scores), or "
    "estimate consistency scores"
)
#: the options of --estimate consistency, each declared once, in ConsistencyConfig (the data
#: and network options are those of every command)
CONSISTENCY_OPTIONS = (
    "num_networks",
    "train_fraction",
    "epochs",
    "per_class",
    "lr",
    "batch_size",
    "seed",
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
        "--scores",
        type=Path,
        default=None,
        metavar="DIR",
        help="score folder (default: runs/experts/<dataset>)",
    )
    parser.add_argument(
        "--import",
        dest="import_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="a .npy file of one score per training sample to add to the table",
    )
    parser.add_argument(
        "--name", default=CSCORE.name, help=f"name of the imported score (default: {CSCORE.name})"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let --import replace a score of the same --name that --scores holds already "
        "(default: refuse)",
    )
    parser.add_argument(
        "--hardest",
        choices=("high", "low"),
        default=None,
        help="which end of the imported score is hardest (default: low for cscore, else high)",
    )
    estimate = parser.add_argument_group(ESTIMATE)
    estimate.add_argument(
        "--estimate",
        choices=tuple(s.name for s in of_kind(EstimatedScore)),
        default=None,
        help="estimate a score instead of reading one: consistency (a hold-out C-score)",
    )
    options.add_options(parser, ConsistencyConfig, CONSISTENCY_OPTIONS, groups={ESTIMATE: estimate})
    common.add_device_options(estimate)
    common.add_model_options(parser, default_width=ConsistencyConfig().model.width)
    common.add_data_options(parser)
    parser.set_defaults(run=run)


def _estimate(args: argparse.Namespace, directory: Path, dataset: ImageDataset) -> None:
    config = ConsistencyConfig(
        dataset=dataset.name,
        model=common.model_config(args),
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        **options.values(args, CONSISTENCY_OPTIONS),
    )
    print(dataset.describe())
    print(f"consistency: {config.describe()}, into {directory.resolve()}")
    started = time.perf_counter()
    estimate_consistency(
        dataset, config, directory, device=args.device, progress=not args.no_progress
    )
    print(
        f"estimated in {time.perf_counter() - started:.0f} s (networks already in the folder "
        "were reused); per-network seconds are in consistency.json"
    )


def _existing(directory: Path, dataset: ImageDataset) -> ScoreTable | None:
    """The table ``directory`` holds, checked to be of ``dataset``; None where it holds none."""
    if not (directory / SCORES_FILE).is_file():
        return None
    return ScoreTable.load(directory).check_data("--scores", directory, dataset)


def run(args: argparse.Namespace) -> int:
    directory = args.scores or Path("runs") / "experts" / common.slug(args.dataset)
    if args.estimate is not None and args.import_file is not None:
        raise ConfigError("--estimate and --import exclude each other; give one")
    if args.estimate is not None or args.import_file is not None:  # writes into --scores
        common.check_output(
            args.scores,
            "folder",
            writes="score table",
            accepts=("experts folder",),
            flag="--scores",
        )
    if args.estimate is not None:
        dataset = common.load_images(args)
        _existing(directory, dataset)
        _estimate(args, directory, dataset)
    if args.import_file is not None:
        dataset = common.load_images(args)
        existing = _existing(directory, dataset)
        if existing is not None and args.name in existing.scores and not args.overwrite:
            raise ConfigError(
                f"--name {args.name}: --scores {directory} holds a {args.name!r} score already; "
                "pass --overwrite to replace it, or import under another --name"
            )
        values = import_score_file(args.import_file, num_samples=len(dataset.train_labels))
        higher = imported_direction(args.name) if args.hardest is None else args.hardest == "high"
        imported = ScoreTable(
            {args.name: values},
            {args.name: higher},
            {
                "dataset": dataset.name,
                f"{args.name}_source": str(args.import_file.resolve()),
                DATA_KEY: data_identity(dataset),
            },
        )
        table = existing.merged(imported) if existing is not None else imported
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
