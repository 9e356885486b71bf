"""Search SelMatch's β and α per IPC with Ray Tune + Optuna, logged to MLflow.

    python tune/search_alpha_beta.py --preset quick   # ~10 min on a 2-core CPU
    python tune/search_alpha_beta.py --preset paper   # on the head of a Ray cluster (ray up)

With no --address it attaches to the Ray cluster of this node when there is one (as
ray.init() does), else starts a local Ray; trials get a GPU each where the cluster has GPUs.

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
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selmatch.cli import options
from selmatch.cli.common import OneLineParser, check_output
from selmatch.core.config import ConfigError, SelmatchError, flag
from selmatch_tune.settings.config import BUDGETS, METHOD_CHOICES, SearchConfig
from selmatch_tune.settings.phase_kinds import PHASES, SUBSETS
from selmatch_tune.settings.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="search_alpha_beta.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Options left out take the preset's values; docs/configuration.md lists every\n"
        "setting with its value in each preset, and --override PATH=VALUE reaches any of them.\n"
        "The search prints the values that differ from the preset.",
    )
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
        "--dry-run",
        action="store_true",
        help="load the data, fit the settings to it, check --out and print what the search "
        "would run; start nothing and write nothing",
    )
    p.add_argument(
        "--wait-for-resources",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on an autoscaling cluster whose GPU (or CPU) workers are not up yet: ask the "
        "autoscaler for --max-concurrent trials' worth and wait up to SECONDS for one trial's "
        "resources before giving up (default: 0 = fail at once)",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDRESS",
        help="the Ray cluster to attach to (host:port, or auto); local = always start a new "
        "local Ray (default: as ray.init() finds one: RAY_ADDRESS, else the cluster `ray "
        "start` runs on this node, else a new local Ray on loopback; the first lines say "
        "which)",
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
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding the dataset files: cifar-10-batches-py/, cifar-100-python/, "
        "tiny-imagenet-200/ (default: $SELMATCH_DATA_ROOT; Fashion-MNIST falls back to "
        "/usr/share/datasets/fashion-mnist)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out image files of an imagefolder (or Tiny ImageNet) that cannot be decoded "
        "(truncated, unreadable, not images) and say how many, naming the first (default: stop "
        "at the first one, naming it)",
    )
    groups = options.add_options(p, SearchConfig, SEARCH_OPTIONS, preset=True)
    if BUDGETS not in groups:
        groups[BUDGETS] = p.add_argument_group(BUDGETS)
    for path, option in PATH_OPTIONS.items():
        cls, name = setting_at(path)
        options.add_option(
            groups[BUDGETS],
            cls,
            name,
            preset=True,
            flag=option or None,
            dest=path,
            help=PATH_HELP.get(path),
        )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="set any setting by its path in the manifest, e.g. distill.lr_images=100 or "
        "short.train.lr=0.05 (repeatable; values are JSON, else strings; applied after the "
        "options above; docs/configuration.md lists every path)",
    )
    options.add_moved(
        p,
        "--set",
        "is a synthetic-set folder in selmatch's commands; the "
        "search's settings by path are --override PATH=VALUE",
    )
    options.add_moved(
        p,
        "--experts",
        "is an expert folder in selmatch's commands; the number of experts is --num-experts N",
    )
    return p


#: The search's options for its own settings (each declared once, in SearchConfig)
SEARCH_OPTIONS = (
    "dataset",
    "image_size",
    "ipcs",
    "beta_grid",
    "alpha_grid",
    "methods",
    "subsets_grid",
    "seqmatch_experts",
    "beta_convention",
    "score",
    "score_table",
    "monotone",
    "random_reference",
    "mtt_candidate",
    "predict_ipcs",
    "full_eval_top",
    "finalists",
    "max_concurrent",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_failures",
    "noise",
    "top_repeats",
    "stage_parallel",
    "final_beside_search",
)
# every registered phase's grid is an option (a new phase's too)
SEARCH_OPTIONS += tuple(
    kind.grid_setting for kind in PHASES.values() if kind.grid_setting not in SEARCH_OPTIONS
)
#: Options for the settings of the configs inside the search, by path: "" for the flag the
#: setting has in the library's commands (``selmatch distill --iterations``), else one of the
#: search's own; ``--width`` sets every trained network's (``WIDTH_PATHS``)
PATH_OPTIONS = {
    "experts.model.width": "--width",
    "experts.num_experts": "",
    "experts.epochs": "--expert-train-epochs",
    "experts.per_class": "",
    **{
        f"distill.{name}": ""
        for name in (
            "iterations",
            "n_student_steps",
            "expert_epochs",
            "max_start_epoch",
            "min_start_epoch",
            "syn_batch",
            "lr_images",
        )
    },
    "short.train.epochs": "--short-epochs",
    "final.train.epochs": "--final-epochs",
    "final.num_seeds": "--final-seeds",
    "final.full_epochs": "--target-epochs",
}
WIDTH_PATHS = ("experts.model.width", "short.model.width", "final.model.width")
DATASET_PATHS = ("experts.dataset", "consistency.dataset")
PATH_HELP = {
    "experts.model.width": "ConvNet width of the experts and of every evaluation network (not "
    "the consistency networks': --override consistency.model.width=W)",
    "experts.epochs": "epochs each expert trains (its trajectory's length; T+ + M must fit in it)",
    "short.train.epochs": "epochs of a trial's evaluation",
    "final.train.epochs": "epochs of the final evaluation",
    "final.num_seeds": "seeds of the final evaluation",
    "final.full_epochs": "the training budget the sets are for, in full-data epochs (the "
    "steps of F epochs over the whole training pool, whatever a set's size; the paper's "
    "evaluation is 50): the final evaluation trains for it, and with --finalists the winner "
    "is chosen there (default: the preset's; none: --final-epochs epochs over the set)",
}


def setting_at(path: str) -> tuple[type, str]:
    """The config class holding the setting at ``path`` of a search, and its field name."""
    *parents, leaf = path.split(".")
    cls: type = SearchConfig
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    return cls, leaf


def option_for(path: str) -> str | None:
    """The search's option that sets ``path`` (``--width`` for every network's width), or
    ``None`` where only ``--override`` reaches it."""
    if path in SEARCH_OPTIONS:
        return options.field_setting(SearchConfig, path)[1].option(path)
    if path in WIDTH_PATHS:
        return "--width"
    if path in DATASET_PATHS:
        return "--dataset"
    if path in PATH_OPTIONS:
        cls, name = setting_at(path)
        return PATH_OPTIONS[path] or options.field_setting(cls, name)[1].option(name)
    return None


@dataclass(frozen=True)
class Assignment:
    """One setting given on the command line: its path, its value, and how the user said it
    (``--iterations 7``, ``--override distill.mode=fast``) for the error messages."""

    path: str
    value: Any
    said: str

    @property
    def option(self) -> str:
        return self.said.split()[0]


def option_assignments(args: argparse.Namespace) -> list[Assignment]:
    """The options given (those left out keep the preset's values), as assignments."""
    out = []
    given = options.values(args, SEARCH_OPTIONS, preset=True)
    for name, value in given.items():
        said = f"{option_for(name)}" + ("" if isinstance(value, bool) else f" {_show(value)}")
        if name == "methods":
            value = METHOD_CHOICES[value]
        out.append(Assignment(name, value, said))
    for path in PATH_OPTIONS:
        value = getattr(args, path)
        if value is None:
            continue
        paths = WIDTH_PATHS if path == WIDTH_PATHS[0] else (path,)
        out += [Assignment(p, value, f"{option_for(path)} {_show(value)}") for p in paths]
    return out


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def override_assignments(texts: list[str]) -> list[Assignment]:
    """``--override PATH=VALUE`` texts as assignments (values are JSON, else strings)."""
    out = []
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"--override expects PATH=VALUE, got {text!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in DATASET_PATHS:  # passed down from the search's own (SearchConfig)
            raise ConfigError(
                f"--override {text}: the experts and the consistency networks learn the "
                "search's data; choose it with --dataset"
            )
        out.append(Assignment(key, value, f"--override {text}"))
    return out


def apply_assignments(config: SearchConfig, assignments: list[Assignment]) -> SearchConfig:
    """``config`` with the assignments made in order (a later one wins), validated together
    by the configs themselves; an error names the assignment at fault as the user wrote it."""
    data = config.to_dict()
    for assignment in assignments:
        node = data
        *parents, leaf = assignment.path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{assignment.said}: {part!r} is not a group of settings")
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"{assignment.said}: unknown setting {leaf!r}; known here: {known}")
        node[leaf] = (
            list(assignment.value) if isinstance(assignment.value, tuple) else (assignment.value)
        )
    try:
        return SearchConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(_in_the_users_words(assignments, error)) from None


def _in_the_users_words(assignments: list[Assignment], error: ConfigError) -> str:
    """A config's error, naming the assignment that set the faulty setting (the last one, if
    it was set twice) instead of the flag its field has in the library's commands, which
    need not exist on this command line; an error that already names an option the user gave
    stays as it is, and one about no setting they gave names them all."""
    message = str(error)
    for assignment in reversed(assignments):
        if error.setting is not None and assignment.path.rsplit(".", 1)[-1] == error.setting:
            own = flag(error.setting) + " "
            return f"{assignment.said}: {message.removeprefix(own)}"
        if message.startswith(assignment.option + " "):
            return message
    return f"{' '.join(a.said for a in assignments)}: {message}"


def apply_overrides(config: SearchConfig, args: argparse.Namespace) -> SearchConfig:
    """The preset ``config`` with the command line's options, then its ``--override``s."""
    return apply_assignments(config, option_assignments(args) + override_assignments(args.override))


def apply_sets(config: SearchConfig, texts: list[str]) -> SearchConfig:
    """``config`` with ``--override PATH=VALUE`` texts applied (the tests' shortcut)."""
    return apply_assignments(config, override_assignments(texts))


def overridden(preset: SearchConfig, config: SearchConfig) -> str:
    """``key=value`` for every setting that differs from the preset's, for the log."""
    from selmatch_tune.results.tracking import flatten

    before, after = flatten(preset.to_dict()), flatten(config.to_dict())
    return ", ".join(f"{k}={after[k]}" for k in after if before.get(k) != after[k])


def dry_run(
    config: SearchConfig, out: Path, *, resume: bool, data_root: str | None, skip_bad_images: bool
) -> None:
    """``--dry-run``: the checks ``run_search`` makes before it starts, then what it would run."""
    from selmatch_tune.flow.search import prepare

    config, _, record = prepare(
        config, out.resolve(), resume=resume, data_root=data_root, skip_bad_images=skip_bad_images
    )
    begun = ", ".join(map(str, record.ipcs)) or "none"
    print(
        f"would search IPCs {list(config.ipcs)} into {out} "
        + (f"(resuming; IPCs begun: {begun})" if record.started else "(a new search)")
    )
    print(
        f"  β grid {list(config.beta_grid)} ({config.beta_convention}) and the random subset, "
        f"then α grid {list(config.alpha_grid)}"
        + (" and plain MTT" if config.mtt_candidate else "")
        + f"; {config.max_concurrent} trial(s) at a time"
    )
    print(
        f"  methods {', '.join(config.methods)}"
        + (
            f" (SeqMatch K grid {list(config.subsets_grid)}, "
            f"{config.seqmatch_experts} stage experts)"
            if config.searches(SUBSETS)
            else ""
        )
    )
    print(
        f"  ranked by {config.score}; trials {config.short.budget()}, final "
        f"{config.final.budget()} with {config.final.num_seeds} seed(s)"
    )
    print("dry run: nothing was started or written")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_root = str(args.data_root) if args.data_root else None
    from selmatch_tune.flow.search import SearchInterrupted, run_search
    from selmatch_tune.results.tracking_uri import bound_http_retries, check_tracking_uri

    out = args.out
    try:
        check_output(out, "folder", writes="search")
        config = apply_overrides(PRESETS[args.preset](), args)
        if args.tracking_uri is not None:  # before data and Ray: a bad URI fails in seconds
            check_tracking_uri(args.tracking_uri)
            bound_http_retries()
        out = out or Path("runs") / f"search-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"preset {config.preset}: {config.dataset}, IPCs {list(config.ipcs)}")
        if config.reduced:
            print(f"the preset's reduced settings: {config.reduced}")
        changed = overridden(PRESETS[args.preset](), config)
        if changed:
            print(f"overridden (the values in force, kept in the manifest): {changed}")
        if args.dry_run:
            dry_run(
                config,
                out,
                resume=args.resume,
                data_root=data_root,
                skip_bad_images=args.skip_bad_images,
            )
            return 0
        run_search(
            config,
            out,
            resume=args.resume,
            tracking_uri=args.tracking_uri,
            address=args.address,
            data_root=data_root,
            storage=args.storage,
            wait_for_resources=args.wait_for_resources,
            skip_bad_images=args.skip_bad_images,
        )
    except SearchInterrupted as error:
        print(
            f"search_alpha_beta: {error}; continue with the same command and --out {out} --resume",
            file=sys.stderr,
        )
        return 130
    except (ConfigError, SelmatchError) as error:
        print(f"search_alpha_beta: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"search_alpha_beta: interrupted; finished stages are saved in {out}: continue "
            f"with the same command and --out {out} --resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
