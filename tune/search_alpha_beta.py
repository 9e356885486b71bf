"""Search SelMatch's β and α per IPC with Ray Tune + Optuna, logged to MLflow.

    python tune/search_alpha_beta.py --preset quick                 # local Ray, ~10 min on CPU
    python tune/search_alpha_beta.py --preset paper --address auto  # on a Ray cluster

Per IPC, in increasing order: a concave-aware search of β (trial = window subset + short
evaluation), then of α at the best β (trial = SelMatch distillation + short evaluation), then
a full evaluation of the winner. Everything goes under --out: best_hparams.csv, the distilled
sets, β/α curves, the MLflow store, Ray's results, search_state.json (for --resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from selmatch.cli.common import OneLineParser, check_output
from selmatch.config import ConfigError, SelmatchError
from selmatch.distill import SEQMATCH_EXPERTS
from selmatch_tune.config import METHOD_CHOICES, SearchConfig
from selmatch_tune.presets import PRESETS


def numbers(kind: type) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers, got {text!r}"
            ) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="search_alpha_beta.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Options left out take the preset's values; docs/configuration.md lists every\n"
        "setting with its value in each preset, and --set KEY=VALUE reaches any of them.\n"
        "The search prints the values that differ from the preset.",
    )  # fmt: skip
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="starting settings: smoke (about a minute, for tests), quick (the CPU demo: "
        "about 10 min on 2 cores), paper (CIFAR-10 settings of the paper, for GPUs) "
        "(default: quick)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: a new folder runs/search-<preset>-<time>)",
    )
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument(
        "--dry-run", action="store_true",
        help="load the data, fit the settings to it, check --out and print what the search "
        "would run; start nothing and write nothing",
    )  # fmt: skip
    p.add_argument(
        "--wait-for-resources", type=float, default=0.0, metavar="SECONDS",
        help="on an autoscaling cluster whose GPU (or CPU) workers are not up yet: ask the "
        "autoscaler for --max-concurrent trials' worth and wait up to SECONDS for one trial's "
        "resources before giving up (default: 0 = fail at once)",
    )  # fmt: skip
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (e.g. auto); default: start a local Ray",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: sqlite database in --out)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Ray Tune storage path; must be shared (NFS, s3://) on a multi-node "
        "cluster (default: --out/ray)",
    )
    p.add_argument(
        "--data-root", default=None,
        help="folder holding the dataset files: cifar-10-batches-py/, cifar-100-python/, "
        "tiny-imagenet-200/ (default: $SELMATCH_DATA_ROOT; Fashion-MNIST falls back to "
        "/usr/share/datasets/fashion-mnist)",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-images", action="store_true",
        help="leave out image files of an imagefolder (or Tiny ImageNet) that cannot be decoded "
        "(truncated, unreadable, not images) and say how many, naming the first (default: stop "
        "at the first one, naming it)",
    )  # fmt: skip
    g = p.add_argument_group("what to search (override the preset)")
    g.add_argument(
        "--dataset", default=None,
        help="fashion-mnist, cifar10, cifar100, tiny-imagenet (from --data-root) or "
        "imagefolder:<path> (your own train/<class>/ and val/<class>/ folders)",
    )  # fmt: skip
    g.add_argument(
        "--image-size", type=int, default=None, metavar="PX",
        help="resize every image to PX x PX (needed for image folders of mixed sizes)",
    )  # fmt: skip
    g.add_argument("--ipcs", type=numbers(int), default=None,
                   help="images per class to search, increasing, e.g. 10,50")  # fmt: skip
    g.add_argument("--beta-grid", type=numbers(float), default=None,
                   help="β values, increasing, e.g. 0,0.1,0.2 (window start; its meaning "
                   "depends on --beta-convention)")  # fmt: skip
    g.add_argument("--alpha-grid", type=numbers(float), default=None,
                   help="α values in [0, 1], increasing, e.g. 0,0.3,0.5,1 (share of the window "
                   "that is distilled; 0 and 1 are always evaluated when in the grid)")  # fmt: skip
    g.add_argument(
        "--method", choices=tuple(METHOD_CHOICES), default=None,
        help="what distils after the β phase: selmatch (the α phase, plain MTT beside it), "
        "seqmatch (the K phase: SeqMatch from the random subset with K from --subsets-grid) "
        "or both (both phases; the best on validation wins and the table's method column "
        "says which) (default: the preset's, selmatch)",
    )  # fmt: skip
    g.add_argument(
        "--subsets-grid", type=numbers(int), default=None,
        help="SeqMatch's K values, increasing, 2 to 10, e.g. 2,3 (the paper: 2 or 3); only "
        "those ≤ an IPC are searched there (default: 2,3)",
    )  # fmt: skip
    g.add_argument(
        "--seqmatch-experts", choices=SEQMATCH_EXPERTS, default=None,
        help="what SeqMatch's stage k matches: segment (the k-th segment of the ordinary "
        "experts, no extra training) or retrained (the authors' code: new experts first "
        "trained on the earlier subsets, run as parallel Ray tasks, --set "
        "distill.stage_experts=N of them per stage) (default: segment)",
    )  # fmt: skip
    g.add_argument(
        "--beta-convention",
        choices=("ipc-units", "data-fraction"),
        default=None,
        help="how β is read: ipc-units skips int(IPC·β) hardest samples per class (the "
        "authors' code, Table 5); data-fraction skips that fraction of each class",
    )
    g.add_argument(
        "--score", default=None,
        help="difficulty score: consistency (a hold-out C-score estimate, trained beside the "
        "experts: the quick and smoke presets' default), forgetting or el2n (free by-products "
        "of the experts)",
    )  # fmt: skip
    g.add_argument(
        "--score-table", default=None, metavar="DIR",
        help="rank by --score from the score table in DIR instead of the experts' own: e.g. "
        "published C-scores imported with `selmatch scores --import FILE.npy --scores DIR` "
        "(then --score cscore)",
    )  # fmt: skip
    g.add_argument(
        "--no-monotone",
        action="store_true",
        help="do not restrict larger IPCs to β ≤ β*, α ≤ α* of the smaller IPC",
    )
    g.add_argument(
        "--no-random-reference", action="store_true",
        help="do not evaluate a random class-balanced subset of each IPC with the final budget "
        "(by default it is, and the table says whether the searched set beats it)",
    )  # fmt: skip
    g.add_argument(
        "--no-mtt-candidate", action="store_true",
        help="do not evaluate plain MTT (the random subset, α = 1) beside an α phase that starts "
        "from a window (by default it is, so the winner is never below MTT on validation)",
    )  # fmt: skip
    g.add_argument(
        "--predict-ipcs",
        type=numbers(int),
        default=None,
        help="IPCs to predict β*, α* for (unverified)",
    )
    b = p.add_argument_group("budgets (override the preset)")
    b.add_argument("--width", type=int, default=None, help="ConvNet width of every network")
    b.add_argument("--experts", type=int, default=None, help="number of experts")
    b.add_argument("--expert-epochs", type=int, default=None, help="epochs per expert")
    b.add_argument("--per-class", type=int, default=None, help="expert training images per class")
    b.add_argument(
        "--iterations", type=int, default=None, help="distillation iterations per α trial"
    )
    b.add_argument("--student-steps", type=int, default=None,
                   help="N: student SGD steps per matching iteration")  # fmt: skip
    b.add_argument("--max-start-epoch", type=int, default=None,
                   help="T+: latest expert epoch a matched segment may start at")  # fmt: skip
    b.add_argument("--min-start-epoch", type=int, default=None,
                   help="T−: earliest expert epoch a matched segment may start at")  # fmt: skip
    b.add_argument("--syn-batch", type=int, default=None,
                   help="b: synthetic images per student step")  # fmt: skip
    b.add_argument("--lr-images", type=float, default=None,
                   help="learning rate of the synthetic pixels")  # fmt: skip
    b.add_argument("--short-epochs", type=int, default=None, help="epochs of a trial's evaluation")
    b.add_argument("--final-epochs", type=int, default=None, help="epochs of the final evaluation")
    b.add_argument("--final-seeds", type=int, default=None, help="seeds of the final evaluation")
    b.add_argument(
        "--full-eval-top",
        type=int,
        default=None,
        help="β points also evaluated with the final budget (rank correlation)",
    )
    r = p.add_argument_group("resources and robustness (override the preset)")
    r.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    r.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial")
    r.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs per trial")
    r.add_argument("--max-failures", type=int, default=None, help="retries of a failed trial")
    r.add_argument(
        "--noise",
        type=float,
        default=None,
        help="seed-to-seed std of a trial's accuracy: ties within it are re-evaluated",
    )
    r.add_argument("--top-repeats", type=int, default=None, help="re-evaluations of close tops")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any setting by its path in the manifest, e.g. distill.lr_images=100 or "
        "short.train.lr=0.05 (repeatable; values are JSON, else strings)",
    )  # fmt: skip
    return p


def apply_sets(config: SearchConfig, assignments: list[str]) -> SearchConfig:
    """``key.path=value`` overrides of any field, validated by the configs themselves."""
    data = config.to_dict()
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {key}: {part!r} is not a group of settings")
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"--set {key}: unknown setting {leaf!r}; known here: {known}")
        node[leaf] = value
    try:
        return SearchConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(_set_error(assignments, str(error))) from None


def _set_error(assignments: list[str], message: str) -> str:
    """A config's error after ``--set`` assignments, in the words of ``--set``: the configs name
    a setting as the flag its field would have (``--mode must be one of …``), which need not
    exist on this command line; the assignment of that setting is named instead (the last one,
    if it was set twice), or all of them where the error names no setting they changed."""
    if message.startswith("--set "):  # a check that speaks of --set already
        return message
    for assignment in reversed(assignments):
        key = assignment.partition("=")[0]
        flag = "--" + key.rsplit(".", 1)[-1].replace("_", "-") + " "
        if message.startswith(flag):
            return f"--set {assignment}: {message[len(flag) :]}"
    return f"--set {' '.join(assignments)}: {message}"


def apply_overrides(config: SearchConfig, args: argparse.Namespace) -> SearchConfig:
    top: dict[str, Any] = {}
    for name in ("ipcs", "image_size", "beta_grid", "alpha_grid", "beta_convention", "score",
                 "score_table",
                 "predict_ipcs", "full_eval_top", "max_concurrent", "cpus_per_trial",
                 "gpus_per_trial", "max_failures", "noise", "top_repeats"):  # fmt: skip
        if getattr(args, name) is not None:
            top[name] = getattr(args, name)
    if args.no_monotone:
        top["monotone"] = False
    if args.no_random_reference:
        top["random_reference"] = False
    if args.no_mtt_candidate:
        top["mtt_candidate"] = False
    if args.method is not None:
        top["methods"] = METHOD_CHOICES[args.method]
    if args.subsets_grid is not None:
        top["subsets_grid"] = args.subsets_grid
    if args.seqmatch_experts is not None:
        top["seqmatch_experts"] = args.seqmatch_experts
    experts, distill = config.experts, config.distill
    short, final = config.short, config.final
    consistency = config.consistency
    if args.dataset:
        top["dataset"] = args.dataset
        experts = experts.replace(dataset=args.dataset)
        consistency = consistency.replace(dataset=args.dataset)
    if args.width:
        experts = experts.replace(model=experts.model.replace(width=args.width))
        short = short.replace(model=short.model.replace(width=args.width))
        final = final.replace(model=final.model.replace(width=args.width))
    for arg, field in (
        ("experts", "num_experts"),
        ("expert_epochs", "epochs"),
        ("per_class", "per_class"),
    ):
        if getattr(args, arg) is not None:
            experts = experts.replace(**{field: getattr(args, arg)})
    distill_fields = (
        ("iterations", "iterations"),
        ("student_steps", "n_student_steps"),
        ("max_start_epoch", "max_start_epoch"),
        ("min_start_epoch", "min_start_epoch"),
        ("syn_batch", "syn_batch"),
        ("lr_images", "lr_images"),
    )
    for arg, field in distill_fields:
        if getattr(args, arg) is not None:
            distill = distill.replace(**{field: getattr(args, arg)})
    if args.short_epochs:
        short = short.replace(train=short.train.replace(epochs=args.short_epochs))
    if args.final_epochs:
        final = final.replace(train=final.train.replace(epochs=args.final_epochs))
    if args.final_seeds:
        final = final.replace(num_seeds=args.final_seeds)
    return config.replace(experts=experts, consistency=consistency, distill=distill, short=short,
                          final=final, **top)  # fmt: skip


def overridden(preset: SearchConfig, config: SearchConfig) -> str:
    """``key=value`` for every setting that differs from the preset's, for the log."""
    from selmatch_tune.tracking import flatten

    before, after = flatten(preset.to_dict()), flatten(config.to_dict())
    return ", ".join(f"{k}={after[k]}" for k in after if before.get(k) != after[k])


def dry_run(
    config: SearchConfig, out: Path, *, resume: bool, data_root: str | None,
    skip_bad_images: bool,
) -> None:  # fmt: skip
    """``--dry-run``: the checks ``run_search`` makes before it starts, then what it would run."""
    from selmatch_tune.search import prepare

    config, _, record = prepare(config, out.resolve(), resume=resume, data_root=data_root,
                                skip_bad_images=skip_bad_images)  # fmt: skip
    begun = ", ".join(map(str, record.ipcs)) or "none"
    print(
        f"would search IPCs {list(config.ipcs)} into {out} "
        + (f"(resuming; IPCs begun: {begun})" if record.has_started else "(a new search)")
    )
    print(f"  β grid {list(config.beta_grid)} ({config.beta_convention}) and the random subset, "
          f"then α grid {list(config.alpha_grid)}"
          + (" and plain MTT" if config.mtt_candidate else "")
          + f"; {config.max_concurrent} trial(s) at a time")  # fmt: skip
    print(f"  methods {', '.join(config.methods)}" + (
        f" (SeqMatch K grid {list(config.subsets_grid)}, "
        f"{config.seqmatch_experts} stage experts)" if "seqmatch" in config.methods
        else ""))  # fmt: skip
    print(f"  ranked by {config.score}; trials {config.short.budget()}, final "
          f"{config.final.budget()} with {config.final.num_seeds} seed(s)")  # fmt: skip
    print("dry run: nothing was started or written")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from selmatch_tune.search import SearchInterrupted, run_search

    out = args.out
    try:
        check_output(out, "folder")
        config = apply_sets(apply_overrides(PRESETS[args.preset](), args), args.set)
        out = out or Path("runs") / f"search-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"preset {config.preset}: {config.dataset}, IPCs {list(config.ipcs)}")
        if config.reduced:
            print(f"the preset's reduced settings: {config.reduced}")
        changed = overridden(PRESETS[args.preset](), config)
        if changed:
            print(f"overridden (the values in force, kept in the manifest): {changed}")
        if args.dry_run:
            dry_run(config, out, resume=args.resume, data_root=args.data_root,
                    skip_bad_images=args.skip_bad_images)  # fmt: skip
            return 0
        run_search(
            config, out, resume=args.resume, tracking_uri=args.tracking_uri,
            address=args.address, data_root=args.data_root, storage=args.storage,
            wait_for_resources=args.wait_for_resources, skip_bad_images=args.skip_bad_images,
        )  # fmt: skip
    except SearchInterrupted as error:
        print(f"search_alpha_beta: {error}; continue with the same command and --out {out} "
              "--resume", file=sys.stderr)  # fmt: skip
        return 130
    except (ConfigError, SelmatchError) as error:
        print(f"search_alpha_beta: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"search_alpha_beta: interrupted; finished stages are saved in {out}: continue "
              f"with the same command and --out {out} --resume", file=sys.stderr)  # fmt: skip
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
