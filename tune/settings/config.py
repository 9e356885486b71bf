"""The search's settings, one frozen dataclass (it feeds the manifest and MLflow params)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selmatch.core.config import (
    Config,
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    flag,
    setting,
)
from selmatch.data import HoldoutSplit, smallest_class_size
from selmatch.difficulty.score_kinds import score_setting
from selmatch.distillation.distill import DistillConfig
from selmatch.distillation.target import SEQMATCH_EXPERTS, SetSpec
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.selection.consistency import ConsistencyConfig
from selmatch.selection.window import BETA_CONVENTIONS, beta_convention_setting
from selmatch.training.experts import ExpertConfig
from selmatch_tune.settings.phase_kinds import ALPHA, SUBSETS, PhaseKind

#: The methods a search can distil with, and what ``--method`` offers.
SEARCH_METHODS = ("selmatch", "seqmatch")
METHOD_CHOICES = {
    "selmatch": ("selmatch",),
    "seqmatch": ("seqmatch",),
    "both": ("selmatch", "seqmatch"),
}
#: ``--gpus-per-trial auto``: a GPU per trial where the cluster has GPUs
AUTO = "auto"
#: the search's --help sections
WHAT = "what to search (override the preset)"
BUDGETS = "budgets (override the preset)"
RESOURCES = "resources and robustness (override the preset)"


@dataclass(frozen=True)
class SearchConfig(Config):
    """β-then-α search per IPC (the random subset a β-phase candidate, α's 0 and 1 always
    evaluated, plain MTT an α-phase candidate). ``short`` evaluates every trial; ``final``
    evaluates each IPC's winner (and the top ``full_eval_top`` β points, for the short-vs-full rank
    correlation, and a random class-balanced subset of the same size when
    ``random_reference``: the baseline the winner has to beat)."""

    dataset: str = setting(
        "fashion-mnist",
        group=WHAT,
        metavar="NAME",
        help="fashion-mnist, cifar10, cifar100, tiny-imagenet (from --data-root) or "
        "imagefolder:<path> (your own train/<class>/ and val/<class>/ folders); the experts' "
        "and the consistency networks' follow",
    )
    image_size: int | None = setting(
        None,
        group=WHAT,
        metavar="PX",
        help="resize every image to PX x PX (default: native; image folders of mixed sizes "
        "need it)",
    )
    ipcs: tuple[int, ...] = setting(
        factory=lambda: (10, 50),
        group=WHAT,
        metavar="I,J",
        help="images per class to search, increasing, e.g. 10,50",
    )
    experts: ExpertConfig = setting(
        factory=ExpertConfig, cli=False, help="the expert trajectories (trained once, cached)"
    )
    score: str = score_setting(
        group=WHAT,
        help="difficulty score ordering the window: consistency (a hold-out C-score estimate, "
        "trained beside the experts: the quick and smoke presets'), forgetting or el2n (free "
        "by-products of the experts), or a score of --score-table",
    )
    score_table: str | None = setting(
        None,
        group=WHAT,
        metavar="DIR",
        help="rank by --score from the score table in DIR instead of the experts' own: e.g. "
        "published C-scores imported with `selmatch scores --import FILE.npy --scores DIR` "
        "(then --score cscore)",
    )
    consistency: ConsistencyConfig = setting(
        factory=ConsistencyConfig,
        cli=False,
        help="how the consistency score is estimated (used when score is consistency)",
    )
    beta_convention: str = beta_convention_setting(group=WHAT)
    beta_grid: tuple[float, ...] = setting(
        factory=lambda: tuple(round(0.1 * i, 1) for i in range(10)),
        group=WHAT,
        metavar="B,..",
        help="β values searched, increasing, e.g. 0,0.1,0.2 (window starts; their meaning: "
        "--beta-convention)",
    )
    alpha_grid: tuple[float, ...] = setting(
        factory=lambda: tuple(round(0.1 * i, 1) for i in range(1, 11)),
        group=WHAT,
        metavar="A,..",
        help="α values searched, in [0, 1], increasing, e.g. 0,0.3,0.5,1; its 0 (selection "
        "only: the oracle window or the random subset) and 1 (every image learned) are always "
        "evaluated, whatever the monotone bound",
    )
    monotone: bool = setting(
        True,
        flag="--no-monotone",
        group=WHAT,
        help="larger IPCs search only β ≤ β*, α ≤ α* of the previous IPC (--no-monotone: "
        "their whole grids)",
    )
    short: EvalConfig = setting(
        factory=EvalConfig, cli=False, help="the evaluation of every trial (short budget)"
    )
    final: EvalConfig = setting(
        factory=EvalConfig,
        cli=False,
        help="the evaluation of each IPC's winner, the top β windows and the random reference",
    )
    random_reference: bool = setting(
        True,
        flag="--no-random-reference",
        group=WHAT,
        help="a random class-balanced subset of each IPC (drawn from the pool with the split's "
        "seed) is evaluated with the final budget beside the winner, and the log warns when "
        "the winner scores below it",
    )
    mtt_candidate: bool = setting(
        True,
        flag="--no-mtt-candidate",
        group=WHAT,
        help="when the α phase starts from a window, plain MTT (the random subset, α = 1, with "
        "the search's matching settings) is one more α-phase candidate, so the winner is "
        "never below MTT on validation",
    )
    distill: DistillConfig = setting(
        factory=DistillConfig,
        cli=False,
        help="the matching settings of every α and K trial (the set each makes, its method, "
        "IPC, β, α, K, is the trial's own)",
    )
    methods: tuple[str, ...] = setting(
        factory=lambda: ("selmatch",),
        flag="--method",
        group=WHAT,
        choices=tuple(METHOD_CHOICES),
        help="what distils after the β phase: selmatch (the α phase, plain MTT beside it), "
        "seqmatch (the K phase: SeqMatch from the random subset, K from --subsets-grid) or "
        "both (both phases; the best on validation wins and the table's method column says "
        "which)",
    )
    subsets_grid: tuple[int, ...] = setting(
        factory=lambda: (2, 3),
        group=WHAT,
        metavar="K,..",
        help="SeqMatch's K values, increasing, 2 to 10, e.g. 2,3 (the paper: 2 or 3); only "
        "those ≤ an IPC are searched there",
    )
    max_start_epoch_grid: tuple[int, ...] = setting(
        factory=tuple,
        group=WHAT,
        metavar="T,..",
        help="T+ values searched after the winner is chosen, increasing, e.g. 20,40,60 "
        "(epochs of the experts, at most their epochs less distill.expert_epochs): every "
        "trial the winner's distillation with that T+, the winner taking the best when it "
        "beats it on validation; empty (the default): T+ stays distill.max_start_epoch",
    )
    seqmatch_experts: str = setting(
        "segment",
        choices=SEQMATCH_EXPERTS,
        group=WHAT,
        help="what SeqMatch's stage k matches: segment (the k-th segment of the ordinary "
        "experts, no extra training) or retrained (the authors' code: new experts first "
        "trained on the earlier subsets, distill.stage_experts of them per stage, in every K "
        "trial)",
    )
    stage_parallel: int = setting(
        0,
        group=RESOURCES,
        help="retrained: stage experts trained side by side as Ray tasks, in this many slots "
        "of a trial's resources reserved beside every K trial (its placement group, so they "
        "never wait on other trials); 0 = in the trial, one after another",
    )
    finalists: int = setting(
        2,
        group=BUDGETS,
        help="the α phase's best α values (> 0, by their short-budget score) that go on to "
        "the target budget (the final evaluation's, --target-epochs), beside the random "
        "subset, the window at β, plain MTT, SeqMatch's best K and a refined winner; the "
        "winner is the best of them on validation at that budget, their seeds shared; 0: the "
        "winner is chosen at the short budget and only it is evaluated at the target budget",
    )
    full_eval_top: int = setting(
        2,
        group=BUDGETS,
        help="β points (best short scores) also evaluated with the final budget, for the rank "
        "correlation of short and full scores within each IPC (≥ 3 to define it)",
    )
    final_beside_search: bool = setting(
        True,
        flag="--final-after-phases",
        group=RESOURCES,
        help="the full evaluations (the random reference from an IPC's start, the top β "
        "windows from the end of its β phase) run beside the search in the trial slots it "
        "never needs (the cluster's slots less --max-concurrent's), so they never delay a "
        "phase, and are awaited after the last IPC, then in every slot (--final-after-phases: "
        "each IPC's after its phases)",
    )
    max_concurrent: int = setting(
        2, group=RESOURCES, help="trials at once (the sampler proposes that many points per round)"
    )
    cpus_per_trial: float = setting(
        1.0, group=RESOURCES, help="CPUs per trial (also torch's thread count in it)"
    )
    gpus_per_trial: float | str = setting(
        AUTO,
        group=RESOURCES,
        metavar="N|auto",
        help="GPUs per trial, also per precompute task and final evaluation: auto = 1 where "
        "the Ray cluster has GPUs when the search starts, else 0 (pass a number on an "
        "autoscaling cluster whose GPU workers start at zero); checked against the cluster "
        "at start",
    )
    max_failures: int = setting(1, group=RESOURCES, help="retries of a failed trial")
    noise: float = setting(
        0.005,
        group=RESOURCES,
        help="seed-to-seed std of a trial's accuracy (a fraction): tops closer than this are "
        "re-evaluated",
    )
    top_repeats: int = setting(1, group=RESOURCES, help="re-evaluations of close tops")
    predict_ipcs: tuple[int, ...] = setting(
        factory=tuple,
        group=WHAT,
        metavar="I,J",
        help="IPCs to predict β*, α* for from the searched ones (unverified, printed with a "
        "warning)",
    )
    preset: str = setting("custom", cli=False, help="the preset's name")
    reduced: str = setting(
        "",
        cli=False,
        help="what the preset shrinks compared with the paper, printed and kept in the manifest",
    )

    def __post_init__(self) -> None:
        if not self.ipcs or list(self.ipcs) != sorted(set(self.ipcs)):
            raise ConfigError(f"--ipcs must be distinct and increasing, got {list(self.ipcs)}")
        for ipc in self.ipcs:
            check_int("ipcs", ipc, 1)
        if self.beta_convention not in BETA_CONVENTIONS:
            raise ConfigError(f"--beta-convention must be one of {', '.join(BETA_CONVENTIONS)}")
        _check_grid("beta_grid", self.beta_grid, 0.0, None)
        _check_grid("alpha_grid", self.alpha_grid, 0.0, 1.0)
        if (
            not self.methods
            or any(m not in SEARCH_METHODS for m in self.methods)
            or len(set(self.methods)) != len(self.methods)
        ):
            raise ConfigError(
                f"--method must be one of {', '.join(METHOD_CHOICES)}, got {','.join(self.methods)}"
            )
        if not self.subsets_grid or list(self.subsets_grid) != sorted(set(self.subsets_grid)):
            raise ConfigError("--subsets-grid must be distinct increasing values")
        for k in self.subsets_grid:
            check_int("subsets_grid", k, 2, 10)
        check_choice("seqmatch_experts", self.seqmatch_experts, SEQMATCH_EXPERTS)
        if list(self.max_start_epoch_grid) != sorted(set(self.max_start_epoch_grid)):
            raise ConfigError("--max-start-epoch-grid must be distinct increasing values")
        for t in self.max_start_epoch_grid:
            check_int(
                "max_start_epoch_grid",
                t,
                self.distill.min_start_epoch + 1,
                self.experts.epochs - self.distill.expert_epochs,
            )
        check_int("stage_parallel", self.stage_parallel, 0, 1000)
        if self.searches(SUBSETS) and self.seqmatch_experts == "retrained":
            # the stage experts' settings are checked before anything starts, not in a trial
            self.distill.resolved(
                SetSpec(method="seqmatch", alpha=1.0, seqmatch_experts="retrained")
            )
        if not self.searches(ALPHA) and min(self.subsets_grid) > min(self.ipcs):
            raise ConfigError(
                f"--subsets-grid must hold a K ≤ the smallest IPC ({min(self.ipcs)}) when "
                f"SeqMatch is the only method, got {list(self.subsets_grid)}"
            )
        if self.image_size is not None:
            check_int("image_size", self.image_size, 8, 1024)
        check_int("full_eval_top", self.full_eval_top, 0, 100)
        check_int("finalists", self.finalists, 0, 100)
        check_bool("final_beside_search", self.final_beside_search)
        check_int("max_concurrent", self.max_concurrent, 1, 10_000)
        check_float("cpus_per_trial", self.cpus_per_trial, 0.0, low_open=True)
        if self.gpus_per_trial != AUTO:
            object.__setattr__(
                self, "gpus_per_trial", _number("gpus_per_trial", self.gpus_per_trial)
            )
        check_int("max_failures", self.max_failures, 0, 100)
        check_float("noise", self.noise, 0.0, 1.0)
        check_int("top_repeats", self.top_repeats, 0, 10)
        # One home: the experts and the consistency networks learn the search's dataset, so
        # their own ``dataset`` is passed down, never declared (a preset names it once).
        for part in ("experts", "consistency"):
            if getattr(self, part).dataset != self.dataset:
                object.__setattr__(self, part, getattr(self, part).replace(dataset=self.dataset))
        split = (self.experts.val_fraction, self.experts.split_seed)
        if (self.consistency.val_fraction, self.consistency.split_seed) != split:
            raise ConfigError(
                f"--override consistency.val_fraction / consistency.split_seed must equal the "
                f"experts' ({split[0]:g} / {split[1]}): the score must never see the validation "
                "slice"
            )

    @property
    def gpus(self) -> float:
        """GPUs per trial, ``auto`` resolved against the cluster first
        (:func:`selmatch_tune.cluster.ray_cluster.resolve_gpus`)."""
        if self.gpus_per_trial == AUTO:
            raise ValueError("--gpus-per-trial auto must be resolved against the cluster first")
        return float(self.gpus_per_trial)

    def searches(self, kind: PhaseKind) -> bool:
        """Whether this search runs the phase ``kind`` (a method's phase runs when --method
        includes that method)."""
        return kind.method is None or kind.method in self.methods

    @property
    def stage_slots(self) -> int:
        """Slots reserved beside each K trial for its stage experts (0 unless SeqMatch with
        retrained experts is searched)."""
        retrained = self.searches(SUBSETS) and self.seqmatch_experts == "retrained"
        return self.stage_parallel if retrained else 0


def _number(name: str, value: object) -> float:
    """A number of ``--gpus-per-trial`` (≥ 0), also as the text the command line gives."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                f"{flag(name)} must be auto or a number in [0, ∞), got {value!r}", setting=name
            ) from None
    return check_float(name, value, 0.0)


def _check_grid(
    name: str, grid: tuple[float, ...], low: float, high: float | None, *, low_open: bool = False
) -> None:
    if not grid or list(grid) != sorted(set(grid)):
        raise ConfigError(f"--{name.replace('_', '-')} must be distinct increasing values")
    for value in grid:
        check_float(name, value, low, high, low_open=low_open)


def fit_to_data(
    config: SearchConfig, labels: torch.Tensor, num_classes: int, split: HoldoutSplit
) -> tuple[SearchConfig, list[str]]:
    """``config`` with every setting sized in images per class clamped to what the dataset
    has (the experts' and the consistency networks' ``per_class``, the IPCs searched and
    predicted), and one line per change saying what and why; a preset made for
    Fashion-MNIST's 6,000 images per class then runs on a folder of 150. ``split`` is the
    experts' hold-out of ``labels`` (the pool is what the settings must fit)."""
    have = smallest_class_size(labels, num_classes, split.pool)
    where = f"the {have} images per class of the pool (its smallest class, validation held out)"
    changes, fitted = [], config
    experts, consistency = config.experts, config.consistency
    if experts.per_class is not None and experts.per_class > have:
        changes.append(f"experts.per_class {experts.per_class} → {have}: {where}")
        experts = experts.replace(per_class=have)
    if consistency.per_class is not None and consistency.per_class > have:
        changes.append(f"consistency.per_class {consistency.per_class} → {have}: {where}")
        consistency = consistency.replace(per_class=have)
    ipcs = tuple(ipc for ipc in config.ipcs if ipc <= have)
    if not ipcs:
        raise ConfigError(f"--ipcs must be at most {have} ({where}), got {list(config.ipcs)}")
    if ipcs != config.ipcs:
        dropped = ", ".join(str(i) for i in config.ipcs if i not in ipcs)
        changes.append(f"IPCs {dropped} dropped: more than {where}")
    predict = tuple(ipc for ipc in config.predict_ipcs if ipc <= have)
    if predict != config.predict_ipcs:
        dropped = ", ".join(str(i) for i in config.predict_ipcs if i not in predict)
        changes.append(f"predicted IPCs {dropped} dropped: more than {where}")
    if changes:
        fitted = config.replace(
            experts=experts, consistency=consistency, ipcs=ipcs, predict_ipcs=predict
        )
    return fitted, changes


def validation_warning(config: SearchConfig, val_size: int) -> str | None:
    """A warning when one validation image moves the accuracy by more than the sampler's
    margin (``noise``): grid points the search tells apart then differ by a few images."""
    if val_size == 0:
        return None
    step = 1.0 / val_size
    if step <= config.noise:
        return None
    return (
        f"WARNING: the validation slice holds {val_size} images, so one image moves a "
        f"trial's accuracy by {100 * step:.2f} points, more than the sampler's margin "
        f"(noise {100 * config.noise:.2f} points): neighbouring grid points are told apart by "
        "a few images; hold out more (--override experts.val_fraction=… and "
        "consistency.val_fraction=…) or raise --noise"
    )
