"""The ``selmatch`` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module with ``register(subparsers)``; it parses flags, builds
the stage's config, calls one library function and says where the results went. Errors the
package raises on purpose (bad settings, missing data, unreadable files) and usage errors are
printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from selmatch import __version__
from selmatch.cli import common, coverage, distill, evaluate, experts, export, scores, window
from selmatch.core.config import SelmatchError

SUBCOMMANDS = (experts, scores, window, distill, evaluate, coverage, export)


def build_parser() -> argparse.ArgumentParser:
    parser = common.OneLineParser(
        prog="selmatch",
        description=(
            "Shrink an image classification training set into a small synthetic one "
            "(SelMatch, SeqMatch, MTT) and evaluate it. Run `selmatch COMMAND --help` for the "
            "options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"selmatch {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SelmatchError as error:
        print(f"selmatch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selmatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
