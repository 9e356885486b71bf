"""The search's settings, one frozen dataclass (it feeds the manifest and MLflow params)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from selmatch.config import Config, ConfigError, check_bool, check_choice, check_float, check_int
from selmatch.consistency import ConsistencyConfig
from selmatch.data import HoldoutSplit, smallest_class_size
from selmatch.distill import SEQMATCH_EXPERTS, DistillConfig
from selmatch.evaluate import EvalConfig
from selmatch.experts import ExpertConfig
from selmatch.window import BETA_CONVENTIONS

#: The methods a search can distil with, and what ``--method`` offers.
SEARCH_METHODS = ("selmatch", "seqmatch")
METHOD_CHOICES = {"selmatch": ("selmatch",), "seqmatch": ("seqmatch",),
                  "both": ("selmatch", "seqmatch")}  # fmt: skip


@dataclass(frozen=True)
class SearchConfig(Config):
    """β-then-α search per IPC (the random subset a β-phase candidate, α's 0 and 1 always
    evaluated, plain MTT an α-phase candidate). ``short`` evaluates every trial; ``final``
    evaluates each IPC's winner (and the top ``full_eval_top`` β points, for the short-vs-full rank
    correlation, and a random class-balanced subset of the same size when
    ``random_reference``: the baseline the winner has to beat)."""

    dataset: str = "fashion-mnist"
    image_size: int | None = None  # resize (imagefolder datasets of mixed sizes)
    ipcs: tuple[int, ...] = (10, 50)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    score: str = "forgetting"
    #: a folder holding a score table to rank by instead of the experts' own scores: e.g. the
    #: published C-scores imported with ``selmatch scores --import`` (``score="cscore"``)
    score_table: str | None = None
    #: how the consistency score is estimated (used when ``score`` is ``consistency``)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    beta_convention: str = "data-fraction"
    beta_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    alpha_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    monotone: bool = True
    short: EvalConfig = field(default_factory=EvalConfig)
    final: EvalConfig = field(default_factory=EvalConfig)
    random_reference: bool = True  # also evaluate a random subset of each IPC with ``final``
    #: plain MTT (random subset, α = 1) as an α-phase candidate when the α phase starts from a
    #: window, so the winner is never below MTT on validation
    mtt_candidate: bool = True
    distill: DistillConfig = field(default_factory=DistillConfig)
    #: what the search distils with after the β phase: ``selmatch`` (the α phase, with plain
    #: MTT beside it) and/or ``seqmatch`` (the K phase: SeqMatch with K from ``subsets_grid``,
    #: its stage experts as ``distill.seqmatch_experts`` says); the best on validation wins
    methods: tuple[str, ...] = ("selmatch",)
    subsets_grid: tuple[int, ...] = (2, 3)
    seqmatch_experts: str = "segment"
    #: retrained stage experts trained side by side: slots of a trial's resources reserved
    #: beside every K trial (its placement group); 0 = trained in the trial, one by one
    stage_parallel: int = 0
    full_eval_top: int = 2
    #: run the full evaluations beside the search (the random reference from an IPC's start,
    #: the top β windows from the end of its β phase), in the slots the search leaves idle,
    #: and wait for them after the last IPC; ``False``: each IPC's after its phases
    final_beside_search: bool = True
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 1
    noise: float = 0.005
    top_repeats: int = 1
    predict_ipcs: tuple[int, ...] = ()
    preset: str = "custom"
    reduced: str = ""

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
        if not isinstance(self.stage_parallel, int) or not 0 <= self.stage_parallel <= 1000:
            raise ConfigError(
                f"--set stage_parallel must be an integer in [0, 1000], got {self.stage_parallel!r}"
            )
        if self.methods == ("seqmatch",) and min(self.subsets_grid) > min(self.ipcs):
            raise ConfigError(
                f"--subsets-grid must hold a K ≤ the smallest IPC ({min(self.ipcs)}) when "
                f"SeqMatch is the only method, got {list(self.subsets_grid)}"
            )
        if self.image_size is not None:
            check_int("image_size", self.image_size, 8, 1024)
        check_int("full_eval_top", self.full_eval_top, 0, 100)
        check_bool("final_beside_search", self.final_beside_search)
        check_int("max_concurrent", self.max_concurrent, 1, 10_000)
        check_float("cpus_per_trial", self.cpus_per_trial, 0.0, low_open=True)
        check_float("gpus_per_trial", self.gpus_per_trial, 0.0)
        check_int("max_failures", self.max_failures, 0, 100)
        check_float("noise", self.noise, 0.0, 1.0)
        check_int("top_repeats", self.top_repeats, 0, 10)
        if self.experts.dataset != self.dataset:
            raise ConfigError("the experts' dataset must be the search's dataset")
        if self.consistency.dataset != self.dataset:
            raise ConfigError("the consistency score's dataset must be the search's dataset")
        split = (self.experts.val_fraction, self.experts.split_seed)
        if (self.consistency.val_fraction, self.consistency.split_seed) != split:
            raise ConfigError(
                f"--set consistency.val_fraction / consistency.split_seed must equal the "
                f"experts' ({split[0]:g} / {split[1]}): the score must never see the validation "
                "slice"
            )

    @property
    def stage_slots(self) -> int:
        """Slots reserved beside each K trial for its stage experts (0 unless SeqMatch with
        retrained experts is searched)."""
        retrained = "seqmatch" in self.methods and self.seqmatch_experts == "retrained"
        return self.stage_parallel if retrained else 0


def _check_grid(name: str, grid: tuple[float, ...], low: float, high: float | None, *,
                low_open: bool = False) -> None:  # fmt: skip
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
        fitted = config.replace(experts=experts, consistency=consistency, ipcs=ipcs,
                                predict_ipcs=predict)  # fmt: skip
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
        "a few images; hold out more (--set experts.val_fraction=… and "
        "consistency.val_fraction=…) or raise --noise"
    )
