"""``selmatch coverage``: how much of the real data a set covers in feature space."""

from __future__ import annotations

import argparse
from pathlib import Path

from selmatch.cli import common
from selmatch.core.artifacts import COVERAGE_KIND
from selmatch.core.io import write_json
from selmatch.selection.coverage import set_coverage
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.experts import ExpertSet
from selmatch.training.train import resolve_device

SUMMARY = "coverage of the real test set and of easy/hard training halves by a set"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "coverage",
        help=SUMMARY,
        description=(
            "SelMatch's coverage metric (Section 3.2): in the feature space of a trained "
            "network (an expert's last epoch), the fraction of real samples within radius r of "
            "some synthetic sample, r = the mean nearest-neighbour distance among real training "
            "samples. Reported for the test set, and for a sample of the training pool overall "
            "and split into its easy and hard halves by --score."
        ),
    )
    parser.add_argument("--set", type=Path, required=True, metavar="DIR", help="a saved set")
    parser.add_argument(
        "--experts",
        type=Path,
        default=None,
        metavar="DIR",
        help="experts giving the feature network (default: runs/experts/<dataset>)",
    )
    common.add_score_options(parser)
    parser.add_argument(
        "--sample",
        type=int,
        default=5000,
        help="training-pool samples used for r and the halves (default: 5000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that sample (default: 0)")
    common.add_device_options(parser, progress=False)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON result (default: coverage.json inside --set)",
    )
    common.add_data_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    common.check_output(args.out, "file", writes="coverage report")
    saved = SyntheticSet.load(args.set)
    args.dataset = saved.manifest["dataset"]
    dataset, split = common.load_data(args)
    experts = ExpertSet.load(
        args.experts or Path("runs") / "experts" / common.slug(dataset.name)
    ).check_data(dataset)
    hardness = common.load_hardness(args, dataset, split)
    report = set_coverage(
        saved.images,
        dataset,
        experts,
        hardness,
        split.pool,
        sample=args.sample,
        seed=args.seed,
        device=resolve_device(args.device),
    )
    print(
        f"coverage of {args.set} ({saved.manifest['method']}, {len(saved.labels)} images), "
        f"r = {report.radius:.4g}: test {100 * report.test:.1f}%, train {100 * report.train:.1f}% "
        f"(easy half {100 * report.train_easy:.1f}%, hard half {100 * report.train_hard:.1f}% "
        f"by {args.score})"
    )
    out = args.out or Path(args.set) / "coverage.json"
    report_json = {"set": str(args.set), "score": args.score, **report.to_dict()}
    write_json(out, {"kind": COVERAGE_KIND, **report_json})
    print(f"written to {out.resolve()}")
    return 0
