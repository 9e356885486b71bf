"""``selmatch distill``: SelMatch, MTT or SeqMatch distillation from saved experts."""

from __future__ import annotations

import argparse
from pathlib import Path

from selmatch.cli import common, options
from selmatch.distillation.distill import DistillConfig, distill, draw
from selmatch.distillation.methods import SEQUENTIAL, method_of
from selmatch.distillation.target import SetSpec
from selmatch.training.experts import ExpertSet
from selmatch.training.train import resolve_device

SUMMARY = "distil a synthetic set by trajectory matching (selmatch, mtt or seqmatch)"
#: the settings this command offers, by --help section (each declared once: the set's in
#: SetSpec, the matching's in DistillConfig)
SEQMATCH_SET = ("subsets", "seqmatch_experts")
SEQMATCH_OPTIONS = ("stage_experts", "stage_prefix_epochs", "stage_expert_epochs")
MATCHING_OPTIONS = (
    "n_student_steps",
    "expert_epochs",
    "max_start_epoch",
    "min_start_epoch",
    "syn_batch",
    "iterations",
    "lr_images",
    "momentum_images",
    "lr_init",
    "lr_lr",
    "momentum_lr",
    "dsa_strategy",
    "mode",
    "trajectories_per_step",
)
LEVER_OPTIONS = ("speed", "compile", "cuda_graphs", "precision", "channels_last")
RUN_OPTIONS = ("checkpoint_every", "seed")
SET_OPTIONS = (
    "method",
    "ipc",
    "init",
    "beta",
    "alpha",
    "merge",
    "beta_convention",
    "score",
    *SEQMATCH_SET,
    "subset_seed",
)
CONFIG_OPTIONS = (*SEQMATCH_OPTIONS, *MATCHING_OPTIONS, *LEVER_OPTIONS, *RUN_OPTIONS)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help=SUMMARY,
        description=(
            "Trajectory matching against saved experts. selmatch: start from the difficulty "
            "window at β, update only the easier α share (D_distill), keep D_select frozen, "
            "train the student on the whole set. mtt: random real start, everything updated. "
            "seqmatch: K subsets learned one after another, stage k against a later segment of "
            "the expert trajectories (--seqmatch-experts segment) or against new experts first "
            "trained on the earlier subsets (retrained, the authors' code). Writes the set "
            "(loadable by `selmatch evaluate --set`, which "
            "then uses combined augmentation), manifest.json with every setting, loss.csv, "
            "loss.png and grid.png; checkpoints every --checkpoint-every iterations "
            "(--resume continues, bit-for-bit)."
        ),
    )
    groups = options.add_options(parser, SetSpec, ("method", "ipc"), required=("ipc",))
    parser.add_argument(
        "--experts",
        type=Path,
        default=None,
        metavar="DIR",
        help="expert folder from `selmatch experts` (default: runs/experts/<dataset>)",
    )
    options.add_options(parser, SetSpec, ("init", "beta", "alpha", "merge"), groups=groups)
    common.add_score_options(parser)
    options.add_options(parser, SetSpec, SEQMATCH_SET, groups=groups)
    options.add_options(parser, DistillConfig, SEQMATCH_OPTIONS, groups=groups)
    groups["SeqMatch"].add_argument(
        "--stage-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="retrained: folder of the stage experts, one subfolder per key (their settings "
        "and the earlier subsets' content), reused by reruns and --resume (default: "
        "runs/stage-experts/<dataset>)",
    )
    options.add_options(parser, DistillConfig, MATCHING_OPTIONS + LEVER_OPTIONS, groups=groups)
    options.add_options(parser, DistillConfig, RUN_OPTIONS, groups=groups)
    options.add_options(parser, SetSpec, ("subset_seed",), groups=groups)
    run = groups["run"]
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    common.add_device_options(run)
    common.add_data_options(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: runs/distill/<dataset>-<method>-ipc<K>)",
    )
    parser.set_defaults(run=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder", writes="distilled set")
    given = options.values(args, SET_OPTIONS)
    fixed_alpha = method_of(args.method).alpha
    if fixed_alpha is not None:  # every image of MTT and SeqMatch is learned
        given["alpha"] = fixed_alpha
    target = SetSpec(**given)
    config = DistillConfig(**options.values(args, CONFIG_OPTIONS)).resolved(target)
    device = resolve_device(args.device)
    levers = config.levers_on(device)
    levers.check_device(device)  # before any loading
    dataset, split = common.load_data(args)
    experts = ExpertSet.load(
        args.experts or Path("runs") / "experts" / common.slug(dataset.name)
    ).check_data(dataset)
    hardness = common.load_hardness(args, dataset, split) if target.needs_scores else None
    out = args.out or Path("runs") / "distill" / (
        f"{common.slug(dataset.name)}-{target.method}-ipc{target.ipc}"
    )
    print(dataset.describe())
    print(
        f"{target.method}: IPC {target.ipc}, N {config.n_student_steps}, M "
        f"{config.expert_epochs}, start epochs [{config.min_start_epoch}, "
        f"{config.max_start_epoch}), b {config.syn_batch}, "
        f"{config.iterations} iterations, {config.mode} mode, {len(experts.finished)} expert(s) "
        f"({experts.config.model.describe()})"
    )
    if levers.active:
        automatic = " (--speed auto on CUDA)" if levers != config.levers else ""
        print(f"speed levers: {levers.describe()}{automatic}")
    if target.retrained:
        print(
            f"seqmatch, retrained stage experts: {config.stage_experts} per stage k > 1, "
            f"{config.stage_prefix_epochs} epochs per earlier-subset step, "
            f"{config.stage_expert_epochs} real-data epochs"
        )
    stage_cache = args.stage_cache or Path("runs") / "stage-experts" / common.slug(dataset.name)
    result = distill(
        target,
        config,
        dataset,
        split,
        experts,
        hardness,
        out,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
        stage_cache=stage_cache,
    )
    draw(out)
    loss = result.manifest["final_loss"]  # None: nothing learned (α = 0, selection only)
    print(
        f"{len(result.labels)} images ({result.num_distill} distilled), final loss "
        f"{'none' if loss is None else f'{loss:.4f}'}, learned lr {result.learned_lr:.4g}, "
        f"{result.manifest['seconds']:.0f} s"
    )
    method = target.method_kind
    if method.sequential:
        print(f"learned lr per stage: {result.manifest['stage_lrs']}")
    print(f"set, manifest.json, loss.csv, loss.png and grid.png written to {out.resolve()}")
    print(f"evaluate it with: selmatch evaluate --set {out}")
    if SEQUENTIAL in method.eval_orders:
        print(f"or in SeqMatch's order: selmatch evaluate --set {out} --eval-order sequential")
    return 0
