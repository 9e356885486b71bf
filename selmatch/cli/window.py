"""``selmatch window`` and ``selmatch window-sweep``: the sliding window of difficulty."""

from __future__ import annotations

import argparse
from pathlib import Path

from selmatch.cli import common, options
from selmatch.core.config import ConfigError
from selmatch.core.plots import save_set_grid
from selmatch.evaluation.sweep import SweepConfig, window_sweep
from selmatch.selection.window import BETA_CONVENTION_TEXT, WindowSpec, select_window, window_set

WINDOW_SUMMARY = "select the class-balanced difficulty window at β (and its α split); save it"
SWEEP_SUMMARY = "evaluate the window subset at every β of a grid against a random subset"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "window",
        help=WINDOW_SUMMARY,
        description=(
            "Order the training pool hardest first, per class (Algorithm 1 of SelMatch), skip "
            "the hardest part as β says and take IPC per class. Within the window the harder "
            "IPC - int(IPC·α) per class are D_select (kept real), the next int(IPC·α) are "
            "D_distill. Writes the set (set.safetensors + manifest.json, loadable by `selmatch "
            "evaluate --set`), the indices and masks, and grid.png (rows: select / distill, "
            "columns: classes)."
        ),
    )
    parser.add_argument("--ipc", type=int, required=True, help="images per class in the window")
    parser.add_argument(
        "--beta",
        type=float,
        default=0.0,
        help="window start β, ≥ 0, read in --beta-convention (default: 0 = the hardest samples)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.0,
        help="share of the window that is D_distill, in [0, 1] (default: 0 = all D_select)",
    )
    common.add_score_options(parser)
    common.add_data_options(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: runs/window/<dataset>-ipc<K>-beta<B>-alpha<A>)",
    )
    parser.set_defaults(run=run_window)

    sweep = subparsers.add_parser(
        "window-sweep",
        help=SWEEP_SUMMARY,
        description=(
            "For one IPC, train networks on the window subset at each β of a grid (selection "
            "only, no distillation; short training by default) and on a random class-balanced "
            "subset of the same size. Prints and saves the accuracy-vs-β table (sweep.csv, "
            "sweep.json) and sweep.png with the random subset as a dashed line (the paper's "
            "Fig. 3). The best β is chosen on validation accuracy. Resumable: finished β "
            "values are kept and skipped when the same command runs again."
        ),
    )
    options.add_options(sweep, SweepConfig, ("ipc", "betas"), required=("ipc",))
    common.add_score_options(sweep)
    common.add_data_options(sweep)
    common.add_model_options(sweep)
    common.add_train_options(
        sweep,
        epochs_help="training epochs of each trial, 'paper', or 'full:F' (steps of F "
        "full-data epochs); the paper finds that 10-20%% of the full epochs rank windows the "
        "same",
    )
    common.add_seed_options(sweep)
    options.add_option(sweep, SweepConfig, "random_subset_seed", dest="subset_seed")
    sweep.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: runs/window-sweep/<dataset>-<score>-ipc<K>)",
    )
    sweep.set_defaults(run=run_sweep)


def run_window(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder", writes="window set")
    spec = WindowSpec(args.ipc, args.beta, args.alpha, args.beta_convention)
    dataset, split = common.load_data(args)
    hardness = common.load_hardness(args, dataset, split)
    window = select_window(
        hardness, dataset.train_labels, dataset.num_classes, spec, among=split.pool
    )
    name = f"{common.slug(dataset.name)}-ipc{spec.ipc}-beta{spec.beta:g}-alpha{spec.alpha:g}"
    out = args.out or Path("runs") / "window" / name
    saved = window_set(dataset, window, score=args.score)
    saved.save(out)
    columns = (window.indices.tolist(), window.labels.tolist(), window.distill_mask.tolist())
    rows = zip(*columns, strict=True)
    lines = [f"{i},{y},{'distill' if d else 'select'}\n" for i, y, d in rows]
    (out / "indices.csv").write_text("train_index,label,part\n" + "".join(lines))
    save_set_grid(
        dataset.denormalize(saved.images),
        saved.labels,
        [("D_select", window.select_mask), ("D_distill", window.distill_mask)],
        dataset.class_names,
        out / "grid.png",
    )
    print(f"{dataset.name}: window {spec.describe()}")
    print(
        f"skipped {window.skipped[0]} hardest per class by {args.score}; "
        f"{int(window.select_mask.sum())} D_select + {int(window.distill_mask.sum())} D_distill"
    )
    print(f"set, indices.csv and grid.png written to {out.resolve()}")
    return 0


def check_betas(values: tuple[float, ...]) -> tuple[float, ...]:
    """``--betas`` without repeats (each β is one row of the sweep)."""
    if len(set(values)) != len(values):
        raise ConfigError(f"--betas has repeated values: {','.join(f'{b:g}' for b in values)}")
    return values


def run_sweep(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder", writes="window sweep")
    dataset, split = common.load_data(args)
    hardness = common.load_hardness(args, dataset, split)
    epochs = common.parse_epochs(args.epochs, args.ipc * dataset.num_classes, len(split.pool))
    augment = "dsa" if args.augment == "auto" else args.augment
    evaluation = common.eval_config(args, common.train_config(args, epochs=epochs, augment=augment))
    config = SweepConfig(
        ipc=args.ipc,
        betas=check_betas(args.betas),
        beta_convention=args.beta_convention,
        score=args.score,
        evaluation=evaluation,
        random_subset_seed=args.subset_seed,
    )
    out = args.out or Path("runs") / "window-sweep" / (
        f"{common.slug(dataset.name)}-{args.score}-ipc{args.ipc}"
    )
    print(dataset.describe())
    print(f"β convention {config.beta_convention}: {BETA_CONVENTION_TEXT[config.beta_convention]}")
    print(
        f"{len(config.betas)} windows + random at IPC {config.ipc}: {evaluation.model.describe()}, "
        f"{epochs} epochs, {augment}, seeds {list(evaluation.seeds)}"
    )
    result = window_sweep(dataset, split, hardness, config, out, progress=not args.no_progress)
    print(result.table())
    print(f"best β by validation accuracy: {result.best_beta:g}")
    print(f"sweep.csv, sweep.json and sweep.png written to {out.resolve()}")
    return 0
