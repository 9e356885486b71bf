"""``selmatch distill``: SelMatch, MTT or SeqMatch distillation from saved experts."""

from __future__ import annotations

import argparse
from pathlib import Path

from selmatch.augment import DEFAULT_DSA_STRATEGY
from selmatch.cli import common
from selmatch.distill import (
    INITS,
    METHODS,
    SEQMATCH_EXPERTS,
    SPEEDS,
    DistillConfig,
    distill,
    draw,
)
from selmatch.experts import ExpertSet
from selmatch.levers import PRECISIONS
from selmatch.matching import MODES
from selmatch.train import resolve_device

SUMMARY = "distil a synthetic set by trajectory matching (selmatch, mtt or seqmatch)"


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
    parser.add_argument("--method", default="selmatch", choices=METHODS, help="(default: selmatch)")
    parser.add_argument("--ipc", type=int, required=True, help="images per class")
    parser.add_argument(
        "--experts", type=Path, default=None, metavar="DIR",
        help="expert folder from `selmatch experts` (default: runs/experts/<dataset>)",
    )  # fmt: skip
    sel = parser.add_argument_group("SelMatch")
    sel.add_argument(
        "--init", default="window", choices=INITS,
        help="window: start from the difficulty window at β (the method); random: from a "
        "random class-balanced subset (--subset-seed), what the search falls back to when it "
        "beats every window; its D_distill is a random α share (default: window)",
    )  # fmt: skip
    sel.add_argument("--beta", type=float, default=0.0, help="window start β (default: 0)")
    sel.add_argument(
        "--alpha", type=float, default=0.5,
        help="share of the window that is learned (D_distill), in [0, 1]; 0 = selection only "
        "(default: 0.5)",
    )  # fmt: skip
    sel.add_argument(
        "--merge", action="store_true",
        help="ablation: compute the loss on D_distill alone and merge D_select afterwards",
    )  # fmt: skip
    common.add_score_options(parser)
    seq = parser.add_argument_group("SeqMatch")
    seq.add_argument("--subsets", type=int, default=2, help="K subsets (default: 2)")
    seq.add_argument(
        "--seqmatch-experts", default="segment", choices=SEQMATCH_EXPERTS,
        help="what stage k matches. segment: the k-th of K segments of [T-, T+) of the "
        "ordinary experts (the paper's description; no extra training). retrained: as the "
        "authors' code, new experts that first learn S1 (with S1's learned lr), then S1+S2 "
        "(S2's), ..., then train on the real data with the experts' settings while their "
        "trajectory is recorded; stage k matches their start epochs [T-, T+) (the last stage "
        "the first half), the learnable lr restarting at --lr-init each stage; cached in "
        "--stage-cache (default: segment)",
    )  # fmt: skip
    seq.add_argument(
        "--stage-experts", type=int, default=2, metavar="N",
        help="retrained: experts per stage k > 1 (default: 2, CPU-sized; the authors: 100)",
    )  # fmt: skip
    seq.add_argument(
        "--stage-prefix-epochs", type=int, default=100, metavar="E",
        help="retrained: epochs of each step on the earlier subsets (S1, then S1+S2, ...) "
        "before the real data (default: 100)",
    )  # fmt: skip
    seq.add_argument(
        "--stage-expert-epochs", type=int, default=None, metavar="E",
        help="retrained: real-data epochs recorded per stage expert (default: T+ + M, the "
        "least the start window needs; the authors: 20)",
    )  # fmt: skip
    seq.add_argument(
        "--stage-cache", type=Path, default=None, metavar="DIR",
        help="retrained: folder of the stage experts, one subfolder per key (their settings "
        "and the earlier subsets' content), reused by reruns and --resume (default: "
        "runs/stage-experts/<dataset>)",
    )  # fmt: skip
    match = parser.add_argument_group("trajectory matching")
    match.add_argument("--student-steps", type=int, default=20, help="N (default: 20; paper 55)")
    match.add_argument("--expert-epochs", type=int, default=2, help="M (default: 2)")
    match.add_argument("--max-start-epoch", type=int, default=10, help="T+ (default: 10; paper 80)")
    match.add_argument(
        "--min-start-epoch", type=int, default=0,
        help="T−: matched segments start at an expert epoch in [T−, T+) (default: 0, as MTT and "
        "SelMatch; a later T−, as DATM does for large IPC, matches only later training)",
    )  # fmt: skip
    match.add_argument(
        "--syn-batch", type=int, default=100, help="b, student mini-batch (default: 100; paper 125)"
    )
    match.add_argument("--iterations", type=int, default=200, help="iterations (paper: 10,000)")
    match.add_argument(
        "--lr-images", type=float, default=1000.0, help="pixel lr, SGD (default: 1000)"
    )
    match.add_argument(
        "--momentum-images", type=float, default=0.5, help="pixel momentum (default: 0.5)"
    )
    match.add_argument(
        "--lr-init", type=float, default=None,
        help="initial learnable lr η (default: 0.001 for selmatch, as its authors' scripts; "
        "0.01 for mtt and seqmatch, MTT's value)",
    )  # fmt: skip
    match.add_argument("--lr-lr", type=float, default=1e-5, help="lr of η (default: 1e-5)")
    match.add_argument(
        "--momentum-lr", type=float, default=0.5, help="momentum of η (default: 0.5)"
    )
    match.add_argument(
        "--dsa-strategy",
        default=DEFAULT_DSA_STRATEGY,
        help=f"DSA on every student batch, or none (default: {DEFAULT_DSA_STRATEGY})",
    )
    match.add_argument(
        "--memory", default="unrolled", choices=sorted(MODES),
        help="unrolled: keep the graph of all N steps (fast); checkpointed: recompute one step "
        "at a time, peak memory independent of N (default: unrolled)",
    )  # fmt: skip
    match.add_argument(
        "--trajectories-per-step", type=int, default=1, metavar="E",
        help="E: expert trajectories (each its own expert, start epoch and student batches) "
        "matched per iteration in one batched computation; the images and η are updated "
        "with the mean of the E losses, an E-trajectory mini-batch per update (default: 1)",
    )  # fmt: skip
    levers = parser.add_argument_group(
        "speed levers of the student step (off by default but for --speed auto on CUDA; "
        "docs/distillation.md)"
    )
    levers.add_argument(
        "--speed", default="auto", choices=SPEEDS,
        help="auto: on a CUDA device, with --trajectories-per-step 1 and --memory unrolled, "
        "switch on --compile and --cuda-graphs (together 2.1-2.4x the plain step on an H200; "
        "the first iteration pays about 30 s of compilation); on CPU, or in other modes, "
        "nothing changes. off: only the levers given below (default: auto)",
    )  # fmt: skip
    levers.add_argument(
        "--compile", action="store_true",
        help="torch.compile each student step's gradient (torch.func.grad of its loss as one "
        "graph; the matching back-propagates through it once). The first iterations pay the "
        "compilation; on CPU its float32 gradient moved by ~1e-2 at width 32 (inductor goes "
        "channels-last: docs/distillation.md) (default: off)",
    )  # fmt: skip
    levers.add_argument(
        "--cuda-graphs", action="store_true",
        help="replay each student step's gradient and its backward from CUDA graphs captured "
        "at the first iteration (one per step with --memory unrolled, one per batch shape "
        "with checkpointed); batch gathering, DSA and the update stay outside. CUDA only: an "
        "error on another device (default: off)",
    )  # fmt: skip
    levers.add_argument(
        "--precision", default="default", choices=PRECISIONS,
        help="float precision of the matching. default: PyTorch's settings (on CUDA, TF32 "
        "convolutions in cuDNN and IEEE float32 matrix products); fp32: IEEE float32 in both; "
        "tf32: TF32 in both (fp32 and tf32 are CUDA settings and change nothing on CPU); bf16: "
        "the student's forward under bfloat16 autocast, loss and updates in float32 (its "
        "gradient differs from float32 by more than 1e-3: docs/distillation.md) "
        "(default: default)",
    )  # fmt: skip
    levers.add_argument(
        "--channels-last", action="store_true",
        help="the student's batches and conv weights in channels-last (NHWC) memory format; "
        "--trajectories-per-step 1 only; on CPU its float32 gradient moved by ~1e-2 at width "
        "32 (CPU BatchNorm statistics in that layout: docs/distillation.md) (default: off)",
    )  # fmt: skip
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=int, default=50, help="iterations (default: 50)")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    run.add_argument(
        "--subset-seed", type=int, default=None,
        help="seed of a random initial subset (mtt, seqmatch, --init random) (default: --seed)",
    )  # fmt: skip
    common.add_device_options(run)
    common.add_data_options(parser)
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="output folder (default: runs/distill/<dataset>-<method>-ipc<K>)",
    )  # fmt: skip
    parser.set_defaults(run=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    common.check_output(args.out, "folder")
    config = DistillConfig(
        method=args.method, ipc=args.ipc, init=args.init, beta=args.beta,
        alpha=1.0 if args.method != "selmatch" else args.alpha,
        beta_convention=args.beta_convention, score=args.score, subsets=args.subsets,
        seqmatch_experts=args.seqmatch_experts, stage_experts=args.stage_experts,
        stage_prefix_epochs=args.stage_prefix_epochs, stage_expert_epochs=args.stage_expert_epochs,
        merge=args.merge, n_student_steps=args.student_steps, expert_epochs=args.expert_epochs,
        min_start_epoch=args.min_start_epoch, max_start_epoch=args.max_start_epoch,
        syn_batch=args.syn_batch,
        iterations=args.iterations, lr_images=args.lr_images,
        momentum_images=args.momentum_images, lr_init=args.lr_init, lr_lr=args.lr_lr,
        momentum_lr=args.momentum_lr, dsa_strategy=args.dsa_strategy, mode=args.memory,
        trajectories_per_step=args.trajectories_per_step, compile=args.compile,
        cuda_graphs=args.cuda_graphs, precision=args.precision, channels_last=args.channels_last,
        speed=args.speed, checkpoint_every=args.checkpoint_every, seed=args.seed,
        subset_seed=args.subset_seed,
    )  # fmt: skip
    device = resolve_device(args.device)
    levers = config.levers_on(device)
    levers.check_device(device)  # before any loading
    dataset, split = common.load_data(args)
    experts = ExpertSet.load(args.experts or Path("runs") / "experts" / common.slug(dataset.name))
    needs_scores = config.method == "selmatch" and config.init == "window"
    hardness = common.load_hardness(args, dataset, split) if needs_scores else None
    out = args.out or Path("runs") / "distill" / (
        f"{common.slug(dataset.name)}-{config.method}-ipc{config.ipc}"
    )
    print(dataset.describe())
    print(
        f"{config.method}: IPC {config.ipc}, N {config.n_student_steps}, M "
        f"{config.expert_epochs}, start epochs [{config.min_start_epoch}, "
        f"{config.max_start_epoch}), b {config.syn_batch}, "
        f"{config.iterations} iterations, {config.mode} mode, {len(experts.finished)} expert(s) "
        f"({experts.config.model.describe()})"
    )
    if levers.active:
        automatic = " (--speed auto on CUDA)" if levers != config.levers else ""
        print(f"speed levers: {levers.describe()}{automatic}")
    if config.retrained:
        print(
            f"seqmatch, retrained stage experts: {config.stage_experts} per stage k > 1, "
            f"{config.stage_prefix_epochs} epochs per earlier-subset step, "
            f"{config.stage_expert_epochs} real-data epochs"
        )
    stage_cache = args.stage_cache or Path("runs") / "stage-experts" / common.slug(dataset.name)
    result = distill(
        config, dataset, split, experts, hardness, out, device=args.device, resume=args.resume,
        progress=not args.no_progress, stage_cache=stage_cache,
    )  # fmt: skip
    draw(out)
    print(
        f"{len(result.labels)} images ({result.num_distill} distilled), final loss "
        f"{result.manifest['final_loss']:.4f}, learned lr {result.learned_lr:.4g}, "
        f"{result.manifest['seconds']:.0f} s"
    )
    if config.method == "seqmatch":
        print(f"learned lr per stage: {result.manifest['stage_lrs']}")
    print(f"set, manifest.json, loss.csv, loss.png and grid.png written to {out.resolve()}")
    print(f"evaluate it with: selmatch evaluate --set {out}")
    if config.method == "seqmatch":
        print(f"or in SeqMatch's order: selmatch evaluate --set {out} --eval-order sequential")
    return 0
