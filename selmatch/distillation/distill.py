"""Distillation by trajectory matching: SelMatch, MTT and SeqMatch from one loop.

One iteration reads ``sample_expert_segment → match (unroll the student) → update_synthetic →
maybe_checkpoint``. The three methods differ only in how the set is initialised and which
part of it is learnable at each stage:

- ``selmatch``: the window at β (:mod:`selmatch.selection.window`); ``D_distill`` (α) is learnable,
  ``D_select`` frozen, the student trains on both. ``merge=True`` is the ablation of Table 4:
  the student trains on ``D_distill`` alone and ``D_select`` is merged back afterwards.
- ``mtt``: a random class-balanced real subset, all of it learnable (α = 1).
- ``seqmatch``: K subsets (near-equal per class) learned one after another; at stage k the
  student trains on S_1..S_k with S_1..S_{k-1} frozen. Two variants of what stage k matches
  (``seqmatch_experts``): ``segment`` (the paper's description, cheap) matches the k-th of K
  segments of [T−, T+) of the ordinary experts, the learned lr carrying on from stage to
  stage; ``retrained`` (the authors' code, METHOD.md) matches the start of new experts that
  first learnt S_1..S_{k-1} (:mod:`selmatch.distillation.seqmatch`), the learned lr restarting at
  ``lr_init`` each stage. Each stage's learned lr is kept (``stage_lrs``) for sequential
  evaluation.

Frozen images receive no gradient and no optimiser state. Checkpoints (every
``checkpoint_every`` iterations) hold everything needed to continue bit-for-bit: the
learnable images, the learned lr, both optimisers' momentum, the random generator, the loss
history. A non-finite loss, gradient or lr stops the run with an error *before* anything is
written, so the last checkpoint and the output folder always hold a good state.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file

from selmatch.core.config import (
    Config,
    ConfigError,
    SelmatchError,
    check_choice,
    check_float,
    check_int,
    check_resumable,
    setting,
)
from selmatch.core.io import atomic_write, read_json, read_safetensors, write_json
from selmatch.core.migrate import CHECKPOINT, migrate
from selmatch.core.plots import save_curve, save_set_grid
from selmatch.core.progress import progress_bar
from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.data.dataset import denormalize
from selmatch.data.identity import DATA_KEY, check_data, data_identity, fingerprint, tensor_digest
from selmatch.distillation.levers import PRECISIONS, Levers, StudentStep
from selmatch.distillation.matching import (
    MODES,
    StudentPlan,
    SyntheticTensors,
    match_trajectories,
    plan_student_steps,
    student_template,
)
from selmatch.distillation.methods import find_method
from selmatch.distillation.seqmatch import EarlierSubsets, cached_stage_experts, stage_expert_config
from selmatch.distillation.target import (
    RUN,
    SEQMATCH,
    SET_KEYS,
    SetSpec,
    initialisation_of,
    target_of,
)
from selmatch.selection.initial import Initial
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.augment import DEFAULT_DSA_STRATEGY, DSAConfig
from selmatch.training.experts import Experts, Mapper
from selmatch.training.models import build_model
from selmatch.training.params import ParamLayout
from selmatch.training.train import resolve_device

#: ``DistillConfig.speed`` values
SPEEDS = ("auto", "off")
CHECKPOINT_DIR = "checkpoint"
MATCHING = "trajectory matching"
LEVERS = (
    "speed levers of the student step (off by default but for --speed auto on CUDA; "
    "docs/distillation.md)"
)
STAGE_CACHE_DIR = "stage-experts"
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class DistillationDivergedError(SelmatchError, ArithmeticError):
    """The matching loss, a gradient or the learned lr stopped being finite (or positive)."""


@dataclass(frozen=True)
class DistillConfig(Config):
    """How a set is matched (which set: :class:`selmatch.distillation.target.SetSpec`). Symbols of
    the papers: N = ``n_student_steps``, M = ``expert_epochs``, T+ = ``max_start_epoch``, b =
    ``syn_batch``. Start epochs are drawn from [``min_start_epoch``, T+): 0 in MTT and SelMatch;
    a later T− (as DATM, Guo et al. 2024, does for large IPC) matches only the later part of
    the experts' training. Two settings have defaults that depend on the set: ``lr_init``
    (the method's) and ``stage_expert_epochs`` (retrained SeqMatch); :meth:`resolved` fills
    them in, and a run uses, saves and compares only resolved settings."""

    stage_experts: int = setting(
        2,
        group=SEQMATCH,
        metavar="N",
        paper="100",
        help="retrained: experts per stage k > 1 (CPU-sized)",
    )
    stage_prefix_epochs: int = setting(
        100,
        group=SEQMATCH,
        metavar="E",
        help="retrained: epochs of each step on the earlier subsets (S1, then S1+S2, ...) "
        "before the real data",
    )
    stage_expert_epochs: int | None = setting(
        None,
        group=SEQMATCH,
        metavar="E",
        help="retrained: real-data epochs recorded per stage expert (default: T+ + M, the "
        "least the start window needs; the authors: 20)",
    )
    n_student_steps: int = setting(
        20,
        flag="--student-steps",
        symbol="N",
        paper="55",
        group=MATCHING,
        help="student SGD steps per iteration",
    )
    expert_epochs: int = setting(
        2,
        symbol="M",
        group=MATCHING,
        help="expert epochs the student's N steps are matched to (the target is θ*_{t+M})",
    )
    min_start_epoch: int = setting(
        0,
        symbol="T−",
        group=MATCHING,
        help="matched segments start at an expert epoch in [T−, T+): 0 in MTT and SelMatch; "
        "a later T−, as DATM does for large IPC, matches only later training",
    )
    max_start_epoch: int = setting(
        10,
        symbol="T+",
        paper="80",
        group=MATCHING,
        help="latest expert epoch a matched segment may start at (exclusive)",
    )
    syn_batch: int = setting(
        100, symbol="b", paper="125", group=MATCHING, help="synthetic images per student step"
    )
    iterations: int = setting(
        200, paper="10,000", group=MATCHING, help="matching iterations (image updates)"
    )
    lr_images: float = setting(1000.0, group=MATCHING, help="pixel learning rate (SGD)")
    momentum_images: float = setting(0.5, group=MATCHING, help="pixel momentum")
    lr_init: float | None = setting(
        None,
        group=MATCHING,
        help="initial learnable lr η (default: 0.001 for selmatch, as its authors' scripts; "
        "0.01 for mtt and seqmatch, MTT's value)",
    )
    lr_lr: float = setting(1e-5, group=MATCHING, help="learning rate of η")
    momentum_lr: float = setting(0.5, group=MATCHING, help="momentum of η")
    dsa_strategy: str = setting(
        DEFAULT_DSA_STRATEGY,
        group=MATCHING,
        metavar="OPS",
        help="DSA on every student batch ('_'-joined operations), or none",
    )
    mode: str = setting(
        "unrolled",
        flag="--memory",
        choices=MODES,
        group=MATCHING,
        help="unrolled: keep the graph of all N steps (fast); checkpointed: recompute one step "
        "at a time, peak memory independent of N",
    )
    trajectories_per_step: int = setting(
        1,
        symbol="E",
        group=MATCHING,
        metavar="E",
        help="expert trajectories (each its own expert, start epoch and student batches) "
        "matched per iteration in one batched computation; the images and η are updated "
        "with the mean of the E losses",
    )
    compile: bool = setting(
        False,
        group=LEVERS,
        help="torch.compile each student step's gradient (torch.func.grad of its loss as one "
        "graph; the matching back-propagates through it once). The first iterations pay the "
        "compilation; on CPU its float32 gradient moved by ~1e-2 at width 32 (inductor goes "
        "channels-last: docs/distillation.md)",
    )
    cuda_graphs: bool = setting(
        False,
        group=LEVERS,
        help="replay each student step's gradient and its backward from CUDA graphs captured "
        "at the first iteration (one per step with --memory unrolled, one per batch shape "
        "with checkpointed); batch gathering, DSA and the update stay outside. CUDA only: an "
        "error on another device",
    )
    precision: str = setting(
        "default",
        choices=PRECISIONS,
        group=LEVERS,
        help="float precision of the matching. default: PyTorch's settings (on CUDA, TF32 "
        "convolutions in cuDNN and IEEE float32 matrix products); fp32: IEEE float32 in both; "
        "tf32: TF32 in both (fp32 and tf32 are CUDA settings and change nothing on CPU); bf16: "
        "the student's forward under bfloat16 autocast, loss and updates in float32 (its "
        "gradient differs from float32 by more than 1e-3: docs/distillation.md)",
    )
    channels_last: bool = setting(
        False,
        group=LEVERS,
        help="the student's batches and conv weights in channels-last (NHWC) memory format; "
        "--trajectories-per-step 1 only; on CPU its float32 gradient moved by ~1e-2 at width "
        "32 (CPU BatchNorm statistics in that layout: docs/distillation.md)",
    )
    speed: str = setting(
        "auto",
        choices=SPEEDS,
        group=LEVERS,
        help="auto: on a CUDA device, with --trajectories-per-step 1 and --memory unrolled, "
        "switch on --compile and --cuda-graphs (together 2.3-2.9x the plain step on an H200, "
        "docs/benchmarks.md; the first iteration pays about 30 s of compilation); on CPU, or "
        "in other modes, nothing changes. off: only the levers given",
    )
    checkpoint_every: int = setting(50, group=RUN, help="iterations between checkpoints")
    seed: int = setting(0, group=RUN, help="seed of every random choice")

    def __post_init__(self) -> None:
        check_int("n_student_steps", self.n_student_steps, 1, 10_000)
        check_int("expert_epochs", self.expert_epochs, 1, 10_000)
        check_int("max_start_epoch", self.max_start_epoch, 1, 10_000)
        check_int("min_start_epoch", self.min_start_epoch, 0, self.max_start_epoch - 1)
        check_int("syn_batch", self.syn_batch, 2, 1_000_000)
        check_int("iterations", self.iterations, 1, 10_000_000)
        # rates are float32 in the loop: an infinite one would only diverge at iteration 0
        check_float("lr_images", self.lr_images, 0.0, FLOAT32_MAX, low_open=True)
        check_float("momentum_images", self.momentum_images, 0.0, 1.0, high_open=True)
        if self.lr_init is not None:
            check_float("lr_init", self.lr_init, 0.0, FLOAT32_MAX, low_open=True)
        check_float("lr_lr", self.lr_lr, 0.0, FLOAT32_MAX)
        check_float("momentum_lr", self.momentum_lr, 0.0, 1.0, high_open=True)
        check_choice("mode", self.mode, MODES)
        check_int("trajectories_per_step", self.trajectories_per_step, 1, 1024)
        check_choice("speed", self.speed, SPEEDS)
        if self.levers.channels_last and self.trajectories_per_step > 1:
            raise ConfigError("--channels-last applies to --trajectories-per-step 1 only")
        check_int("checkpoint_every", self.checkpoint_every, 1)
        check_int("seed", self.seed, 0, 2**31 - 1)
        if self.dsa_strategy != "none":
            DSAConfig(strategy=self.dsa_strategy)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillConfig:
        """Also reads the flat settings written before the set's spec left this config
        (manifests, checkpoints, search records, Tune param spaces): the set's keys are left
        out (:func:`selmatch.distillation.target.target_of` reads them), and an ``lr_init`` equal to
        that method's default was the default (``None``)."""
        settings = {k: v for k, v in data.items() if k not in SET_KEYS}
        method = find_method(data.get("method"))
        if method is not None and settings.get("lr_init") == method.lr_init:
            settings["lr_init"] = None
        return cast(DistillConfig, super().from_dict(settings))

    def resolved(self, target: SetSpec) -> DistillConfig:
        """These settings for a distillation of ``target``: ``lr_init`` the method's unless
        given; for retrained SeqMatch, its stage experts' settings checked and
        ``stage_expert_epochs`` T+ + M unless given. The one place the two parts meet."""
        lr_init = target.method_kind.lr_init if self.lr_init is None else self.lr_init
        if not target.retrained:
            return self.replace(lr_init=lr_init)
        check_int("stage_experts", self.stage_experts, 1, 10_000)
        check_int("stage_prefix_epochs", self.stage_prefix_epochs, 1, 1_000_000)
        epochs = self.stage_expert_epochs
        epochs = self.max_start_epoch + self.expert_epochs if epochs is None else epochs
        check_int("stage_expert_epochs", epochs, self.min_start_epoch + self.expert_epochs, 10_000)
        return self.replace(lr_init=lr_init, stage_expert_epochs=epochs)

    @property
    def levers(self) -> Levers:
        """The levers asked for one by one (``levers_on`` adds what ``speed`` switches on)."""
        return Levers(
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
            precision=self.precision,
            channels_last=self.channels_last,
        )

    def levers_on(self, device: torch.device) -> Levers:
        """The levers a run on ``device`` uses: those asked for, plus compile and CUDA graphs
        where ``speed`` is ``auto`` and the run is the measured case (CUDA, E = 1, unrolled)."""
        auto = (
            self.speed == "auto"
            and device.type == "cuda"
            and self.trajectories_per_step == 1
            and self.mode == "unrolled"
        )
        if not auto:
            return self.levers
        # torch.compile's GPU code is Triton's: without it, CUDA graphs alone
        compiles = self.compile or importlib.util.find_spec("triton") is not None
        return Levers(
            compile=compiles,
            cuda_graphs=True,
            precision=self.precision,
            channels_last=self.channels_last,
        )

    @property
    def initial_lr(self) -> float:
        assert self.lr_init is not None, "the settings of a run are resolved (resolved())"
        return self.lr_init


def settings_of(settings: Mapping[str, Any]) -> tuple[SetSpec, DistillConfig]:
    """The set's spec and the resolved matching settings from flat ``distill`` settings (a
    manifest's, a checkpoint's; :func:`flat_settings`' inverse)."""
    target = target_of(settings)
    return target, DistillConfig.from_dict(settings).resolved(target)


def flat_settings(target: SetSpec, config: DistillConfig) -> dict[str, Any]:
    """One flat dict of both parts: a manifest's and a checkpoint's ``distill``, as written
    before the set's spec left :class:`DistillConfig`."""
    return {**target.to_dict(), **config.to_dict()}


@dataclass
class Stage:
    """Which rows of the set are learnable, which are frozen but trained on, and which
    expert start epochs this stage draws from."""

    learnable: torch.Tensor
    frozen: torch.Tensor
    start_epochs: tuple[int, int]


@dataclass
class DistillState:
    """Everything that changes during a run (and goes into a checkpoint)."""

    images: torch.Tensor
    syn_lr: torch.Tensor
    stage: int = 0
    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    image_momentum: torch.Tensor | None = None
    lr_momentum: torch.Tensor | None = None
    generator_state: torch.Tensor | None = None
    seconds: float = 0.0
    #: the learned lr at the end of each finished stage
    stage_lrs: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- initialisation
def initial_set(
    target: SetSpec,
    seed: int,
    dataset: ImageDataset,
    split: HoldoutSplit,
    hardness: torch.Tensor | None,
) -> Initial:
    """The real images the set starts from, its distill mask and (SeqMatch) subset ids."""
    return initialisation_of(target, seed).select(dataset, split, hardness)


def stages_of(target: SetSpec, config: DistillConfig, initial: Initial) -> list[Stage]:
    """Each stage's learnable and frozen rows and start epochs (``config`` resolved)."""
    everything = torch.arange(len(initial.labels))
    if not target.method_kind.sequential:
        learnable = everything[initial.distill_mask]
        frozen = (
            torch.empty(0, dtype=torch.int64) if target.merge else everything[~initial.distill_mask]
        )
        return [Stage(learnable, frozen, (config.min_start_epoch, config.max_start_epoch))]
    windows = (_retrained_windows if target.retrained else _segment_windows)(config, target.subsets)
    return [
        Stage(everything[initial.subset_ids == k], everything[initial.subset_ids < k], window)
        for k, window in enumerate(windows)
    ]


def _segment_windows(config: DistillConfig, subsets: int) -> list[tuple[int, int]]:
    """The segment variant: stage k draws from the k-th of K equal parts of [T−, T+)."""
    cuts = torch.linspace(config.min_start_epoch, config.max_start_epoch, subsets + 1)
    edges = cuts.round().long().tolist()
    return [(edges[k], max(edges[k] + 1, edges[k + 1])) for k in range(subsets)]


def _retrained_windows(config: DistillConfig, subsets: int) -> list[tuple[int, int]]:
    """The retrained variant, after the authors' code: every stage matches the *start* of
    its own experts, [T−, T+) (stage 1, the ordinary experts; stages k > 1 clipped to what
    their recorded epochs hold), the last stage of several only the first half of it (their
    [0, 10) after [0, 20))."""
    low, high = config.min_start_epoch, config.max_start_epoch
    assert config.stage_expert_epochs is not None  # resolved()
    later = min(high, config.stage_expert_epochs - config.expert_epochs + 1)
    if subsets == 1:
        return [(low, high)]
    last = low + max(1, (later - low + 1) // 2)
    return [(low, high)] + [(low, later)] * (subsets - 2) + [(low, last)]


# --------------------------------------------------------------------------- checkpoints
class CheckpointError(SelmatchError):
    """A checkpoint cannot be continued: damaged, or not this run's."""


def run_inputs(dataset: ImageDataset, experts: Experts, initial: Initial) -> dict[str, Any]:
    """What a checkpoint records of the run's inputs, so that a resume meets the same ones: the
    data's identity, the experts' fingerprint (settings, layout, which are finished) and the
    digest of the real images the initialisation picked (the score table's choice)."""
    return {
        DATA_KEY: data_identity(dataset),
        "experts": fingerprint(
            {
                "config": experts.config.to_dict(),
                "layout": experts.layout.to_dict(),
                "finished": experts.finished,
            }
        ),
        "experts_directory": str(experts.directory),
        "initial": tensor_digest(initial.indices),
    }


@dataclass(frozen=True)
class _Expected:
    """What a checkpoint of this run must hold: the settings, the stages, the set's image
    shape (N, C, H, W) and the inputs (:func:`run_inputs`)."""

    target: SetSpec
    config: DistillConfig
    stages: list[Stage]
    images: tuple[int, ...]
    inputs: dict[str, Any]


def _save_checkpoint(run: _Run, state: DistillState) -> None:
    tensors = {"images": state.images, "syn_lr": state.syn_lr.detach().reshape(1)}
    for name in ("image_momentum", "lr_momentum", "generator_state"):
        value = getattr(state, name)
        if value is not None:
            tensors[name] = value.detach().cpu().contiguous()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    folder = run.directory / CHECKPOINT_DIR
    atomic_write(folder / "state.safetensors", lambda p: save_file(tensors, p))
    write_json(
        folder / "state.json",
        {
            CHECKPOINT.key: CHECKPOINT.version,
            "config": flat_settings(run.target, run.config),
            "stage": state.stage,
            "iteration": state.iteration,
            "losses": state.losses,
            "seconds": state.seconds,
            "stage_lrs": state.stage_lrs,
            "inputs": run.inputs,
        },
    )


#: Settings a resumed distillation may change.
RESUMABLE = ("iterations", "lr_images", "lr_lr", "checkpoint_every")


def _load_checkpoint(
    directory: Path, expected: _Expected, dataset: ImageDataset, *, resume: bool
) -> DistillState | None:
    """The state in ``directory``'s checkpoint, checked to be sound and this run's (the same
    settings but for :data:`RESUMABLE`, data, experts and initial images); ``None`` if there
    is none. A checkpoint without ``resume`` is an error: a run never overwrites another."""
    folder = directory / CHECKPOINT_DIR
    if not (folder / "state.json").is_file():
        return None
    if not resume:
        raise ConfigError(
            f"--out {directory} holds a distillation already; add --resume or pick another --out"
        )
    saved = _checked_record(read_json(folder / "state.json"), folder / "state.json", expected)
    # More iterations, or lower learning rates after a divergence, continue the same run.
    check_resumable(
        flat_settings(*settings_of(saved["config"])),
        flat_settings(expected.target, expected.config),
        f"--resume: {directory} was distilled with other settings ({{changed}}); only "
        "--iterations, --lr-images, --lr-lr and --checkpoint-every may change on resume",
        may_change=RESUMABLE,
    )
    tensors = read_safetensors(folder / "state.safetensors")
    _check_tensors(tensors, folder / "state.safetensors", expected, expected.stages[saved["stage"]])
    _check_inputs(saved["inputs"], folder, expected, dataset)
    return DistillState(
        images=tensors["images"],
        syn_lr=tensors["syn_lr"].reshape(()),
        stage=saved["stage"],
        iteration=saved["iteration"],
        losses=saved["losses"],
        image_momentum=tensors.get("image_momentum"),
        lr_momentum=tensors.get("lr_momentum"),
        generator_state=tensors.get("generator_state"),
        seconds=saved["seconds"],
        stage_lrs=saved["stage_lrs"],
    )


def _damaged(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"--resume: {path}: {problem}; the checkpoint is damaged or not this run's: delete "
        f"{path.parent} (or pick another --out) to start again"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_record(saved: Any, path: Path, expected: _Expected) -> dict[str, Any]:
    """``state.json``'s record, its fields of the right kinds and in range."""
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise _damaged(path, "not a distillation checkpoint (no config)")
    saved = migrate(CHECKPOINT, saved, path)
    if not isinstance(saved.get("inputs", 0), (dict, type(None))):
        raise _damaged(path, "inputs must be the record of the run's inputs")
    try:
        settings_of(saved["config"])
    except ConfigError as error:
        raise _damaged(path, f"its config is not a distillation's ({error})") from None
    stages, iteration = len(expected.stages), saved.get("iteration")
    if not isinstance(saved.get("stage"), int) or not 0 <= saved["stage"] < stages:
        raise _damaged(
            path, f"stage must be an integer in [0, {stages - 1}], got {saved.get('stage')!r}"
        )
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise _damaged(path, f"iteration must be an integer ≥ 0, got {iteration!r}")
    if iteration > expected.config.iterations:
        raise CheckpointError(
            f"--iterations {expected.config.iterations} is fewer than the {iteration} that "
            f"--resume's {path} has done already; resume with --iterations {iteration} or more, "
            f"or delete {path.parent} to start again"
        )
    losses, lrs = saved.get("losses"), saved.get("stage_lrs")
    if not isinstance(losses, list) or not all(_is_number(v) for v in losses):
        raise _damaged(path, "losses must be a list of finite numbers")
    if not _is_number(saved.get("seconds")):
        raise _damaged(path, f"seconds must be a number, got {saved.get('seconds')!r}")
    if not isinstance(lrs, list) or len(lrs) != saved["stage"] or not all(map(_is_number, lrs)):
        raise _damaged(
            path, f"stage_lrs must be {saved['stage']} finite number(s), one per finished stage"
        )
    return saved


def _check_tensors(
    tensors: dict[str, torch.Tensor], path: Path, expected: _Expected, stage: Stage
) -> None:
    """``state.safetensors``' tensors: the set's images (float, finite, its shape), a finite
    positive lr, momentum of the learnable rows' shape, a CPU generator's state."""
    missing = [k for k in ("images", "syn_lr") if k not in tensors]
    if missing:
        raise _damaged(path, f"it lacks the tensor(s) {', '.join(missing)}")
    images, lr = tensors["images"], tensors["syn_lr"]
    shape, learnable = tuple(images.shape), (len(stage.learnable), *expected.images[1:])
    checks = (
        (
            images.is_floating_point() and shape == expected.images,
            f"images are {images.dtype} {shape}, this set's are float {expected.images}",
        ),
        (bool(torch.isfinite(images).all()), "images hold NaN or infinite pixels"),
        (
            _fits(lr, (1,)) and float(lr.flatten()[0]) > 0,
            f"syn_lr must be one finite float > 0, got {_shown(lr)}",
        ),
        (
            _fits(tensors.get("image_momentum"), learnable),
            f"image_momentum must be float {learnable}, finite (the stage's learnable images)",
        ),
        (_fits(tensors.get("lr_momentum"), (1,)), "lr_momentum must be one finite number"),
        (
            _is_generator_state(tensors.get("generator_state")),
            "generator_state is not a random generator's state",
        ),
    )
    for ok, problem in checks:
        if not ok:
            raise _damaged(path, problem)


def _shown(tensor: torch.Tensor) -> str:
    return str(tensor.flatten()[0].item()) if tensor.numel() == 1 else str(tuple(tensor.shape))


def _fits(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> bool:
    """``tensor`` absent, or float, finite and of ``shape`` (a one-number shape: any)."""
    if tensor is None:
        return True
    right = tensor.numel() == 1 if shape == (1,) else tuple(tensor.shape) == shape
    return tensor.is_floating_point() and right and bool(torch.isfinite(tensor).all())


def _is_generator_state(state: torch.Tensor | None) -> bool:
    expected = torch.Generator().get_state()
    return state is None or (state.dtype == expected.dtype and state.shape == expected.shape)


def _check_inputs(recorded: Any, folder: Path, expected: _Expected, dataset: ImageDataset) -> None:
    """The checkpoint's inputs against this run's: the data (--dataset, --data-root), the
    experts (--experts) and the real images the initialisation picked (--scores, --score)."""
    if recorded is None:  # written before checkpoints recorded them (selmatch.core.migrate)
        print(
            f"selmatch: warning: --resume: {folder} predates recorded inputs; its data, experts "
            "and scores are not checked against these",
            file=sys.stderr,
        )
        return
    check_data(recorded.get(DATA_KEY), dataset, f"--resume: the checkpoint in {folder}")
    now = expected.inputs
    if recorded.get("experts") not in (None, now["experts"]):
        raise ConfigError(
            f"--resume: {folder} was distilled against other experts "
            f"({recorded.get('experts_directory')}, fingerprint {recorded['experts']}) than "
            f"--experts {now['experts_directory']} ({now['experts']}): their settings, layout or "
            f"finished experts differ; use the interrupted run's --experts, or delete {folder} "
            "to start again"
        )
    if recorded.get("initial") not in (None, now["initial"]):
        given = (
            "--scores and --score"
            if expected.target.needs_scores
            else "--val-fraction and --split-seed"
        )
        raise ConfigError(
            f"--resume: {folder} started from other real images (digest {recorded['initial']}) "
            f"than {given} pick now ({now['initial']}); use the interrupted run's {given}, or "
            f"delete {folder} to start again"
        )


# --------------------------------------------------------------------------- the loop
def check_experts(config: DistillConfig, experts: Experts, split: HoldoutSplit) -> None:
    available = experts.config.epochs
    if config.max_start_epoch + config.expert_epochs > available:
        raise ConfigError(
            f"--max-start-epoch + --expert-epochs must be ≤ {available} (the experts' epochs), "
            f"got {config.max_start_epoch} + {config.expert_epochs}"
        )
    if not experts.finished:
        raise ConfigError(f"--experts {experts.directory} holds no finished expert")
    if (experts.config.val_fraction, experts.config.split_seed) != (split.val_fraction, split.seed):
        raise ConfigError(
            f"--experts were trained with --val-fraction {experts.config.val_fraction} "
            f"--split-seed {experts.config.split_seed}; use the same values"
        )


def _momentum(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    parameter = optimizer.param_groups[0]["params"][0]
    return optimizer.state.get(parameter, {}).get("momentum_buffer")


def _restore_momentum(optimizer: torch.optim.Optimizer, buffer: torch.Tensor | None) -> None:
    if buffer is not None:
        parameter = optimizer.param_groups[0]["params"][0]
        optimizer.state[parameter]["momentum_buffer"] = buffer.to(parameter.device).clone()


def _check_finite(
    iteration: int, loss: float, grads: list[torch.Tensor], lr: float, where: Path
) -> None:
    bad = [
        name
        for name, ok in (
            ("matching loss", math.isfinite(loss)),
            ("image gradient", all(bool(torch.isfinite(g).all()) for g in grads[:1])),
            ("lr gradient", all(bool(torch.isfinite(g).all()) for g in grads[1:])),
            ("learned lr", math.isfinite(lr) and lr > 0),
        )
        if not ok
    ]
    if bad:
        raise DistillationDivergedError(
            f"distillation diverged at iteration {iteration}: {', '.join(bad)} not finite "
            f"(or lr ≤ 0; lr = {lr:.3g}); lower --lr-images or --lr-lr and --resume from the "
            f"last checkpoint in {where / CHECKPOINT_DIR}, or start again if it is already bad"
        )


@dataclass
class _Run:
    """What stays fixed during one distillation run (``config`` resolved for ``target``)."""

    target: SetSpec
    config: DistillConfig
    directory: Path
    template: torch.nn.Module
    layout: ParamLayout
    #: the experts matched, read a segment at a time (:func:`sample_expert_segment`), and
    #: which of them may be drawn
    experts: Experts
    expert_ids: list[int]
    labels: torch.Tensor
    image_size: tuple[int, int]
    dsa: DSAConfig | None
    device: torch.device
    progress: bool
    #: the student step under the speed levers; ``None`` when all are off
    step: StudentStep | None = None
    #: what the checkpoints record of the inputs (:func:`run_inputs`)
    inputs: dict[str, Any] = field(default_factory=dict)


def sample_expert_segment(
    run: _Run, start_epochs: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ*_t and θ*_{t+M} of a random expert and a random start epoch t in the stage's range,
    on the run's device. Only these two snapshots are read and moved there: the memory a
    distillation needs does not grow with the number of experts."""
    expert = run.expert_ids[int(torch.randint(len(run.expert_ids), (1,), generator=generator))]
    low, high = start_epochs
    epoch = int(torch.randint(low, high, (1,), generator=generator))
    rows = run.experts.snapshots(expert, (epoch, epoch + run.config.expert_epochs))
    if run.device.type == "cuda" and rows.device.type == "cpu":
        rows = rows.pin_memory().to(run.device, non_blocking=True)  # not holding the host back
    else:
        rows = rows.to(run.device)
    return rows[0], rows[1]


def sample_trajectories(
    run: _Run, start_epochs: tuple[int, int], set_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[StudentPlan]]:
    """E = ``trajectories_per_step`` draws of (segment, student plan), one after another from
    ``generator``: exactly the draws E one-trajectory iterations would make. Returns the
    (E, P) starts and targets and the E plans."""
    config = run.config
    starts, targets, plans = [], [], []
    for _ in range(config.trajectories_per_step):
        start, target = sample_expert_segment(run, start_epochs, generator)
        plans.append(
            plan_student_steps(
                set_size,
                config.n_student_steps,
                config.syn_batch,
                run.image_size,
                run.dsa,
                generator,
                run.device,
            )
        )
        starts.append(start)
        targets.append(target)
    return torch.stack(starts), torch.stack(targets), plans


def _run_stage(run: _Run, stage: Stage, state: DistillState, generator: torch.Generator) -> None:
    config = run.config
    if len(stage.learnable) == 0:  # α = 0, selection only: nothing to learn
        return
    learnable = state.images[stage.learnable].to(run.device).clone().requires_grad_(True)
    frozen = state.images[stage.frozen].to(run.device)
    labels = torch.cat([run.labels[stage.frozen], run.labels[stage.learnable]]).to(run.device)
    synthetic = SyntheticTensors(frozen, learnable, labels)
    syn_lr = state.syn_lr.to(run.device).clone().requires_grad_(True)
    image_opt = torch.optim.SGD([learnable], lr=config.lr_images, momentum=config.momentum_images)
    lr_opt = torch.optim.SGD([syn_lr], lr=config.lr_lr, momentum=config.momentum_lr)
    _restore_momentum(image_opt, state.image_momentum)
    _restore_momentum(lr_opt, state.lr_momentum)
    stages = run.target.stages
    desc = f"stage {state.stage + 1}/{stages}" if stages > 1 else "distill"
    todo = range(state.iteration, config.iterations)
    bar = progress_bar(
        todo, desc=desc, enabled=run.progress, initial=state.iteration, total=config.iterations
    )
    for iteration in bar:
        started = time.perf_counter()
        starts, targets, plans = sample_trajectories(
            run, stage.start_epochs, len(labels), generator
        )
        result = match_trajectories(
            config.mode,
            run.template,
            run.layout,
            starts,
            targets,
            synthetic,
            syn_lr,
            plans,
            run.step,
        )
        _check_finite(
            iteration,
            result.loss,
            [result.grad_learnable, result.grad_lr],
            float(syn_lr.detach()),
            run.directory,
        )
        learnable.grad, syn_lr.grad = result.grad_learnable, result.grad_lr.reshape(syn_lr.shape)
        image_opt.step()
        lr_opt.step()
        _check_finite(iteration, result.loss, [], float(syn_lr.detach()), run.directory)
        state.losses.append(result.loss)
        state.iteration = iteration + 1
        state.seconds += time.perf_counter() - started
        bar.set_postfix(
            loss=f"{result.loss:.4f}", lr=f"{float(syn_lr.detach()):.4g}", refresh=False
        )
        if state.iteration % config.checkpoint_every == 0 or state.iteration == config.iterations:
            state.images[stage.learnable] = learnable.detach().cpu()
            state.syn_lr = syn_lr.detach().cpu()
            state.image_momentum, state.lr_momentum = _momentum(image_opt), _momentum(lr_opt)
            state.generator_state = generator.get_state()
            _save_checkpoint(run, state)
    state.images[stage.learnable] = learnable.detach().cpu()
    state.syn_lr = syn_lr.detach().cpu()


def distill(
    target: SetSpec,
    config: DistillConfig,
    dataset: ImageDataset,
    split: HoldoutSplit,
    experts: Experts,
    hardness: torch.Tensor | None,
    directory: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    stage_cache: str | Path | None = None,
    stage_mapper: Mapper = map,
) -> SyntheticSet:
    """Distil the set ``target`` with the matching settings ``config``, writing checkpoints
    and the result to ``directory``. SeqMatch's retrained stage experts are kept in
    ``stage_cache`` (default ``directory/stage-experts``) and trained one after another, or as
    ``stage_mapper`` runs them (the search: parallel Ray tasks)."""
    directory = Path(directory)
    config = config.resolved(target)
    check_experts(config, experts, split)
    torch_device = resolve_device(device)
    levers = config.levers_on(torch_device)
    levers.check_device(torch_device)
    initial = initial_set(target, config.seed, dataset, split, hardness)
    stages = stages_of(target, config, initial)
    inputs = run_inputs(dataset, experts, initial)
    shape = (len(initial.labels), *dataset.image_shape)
    existing = _load_checkpoint(
        directory, _Expected(target, config, stages, shape, inputs), dataset, resume=resume
    )
    template = student_template(
        build_model(experts.config.model, dataset.image_shape, dataset.num_classes)
    ).to(torch_device)
    if ParamLayout.of(template) != experts.layout:
        raise ConfigError("the experts' parameter layout does not match their model config")
    run = _Run(
        target,
        config,
        directory,
        template,
        experts.layout,
        experts,
        experts.finished,
        initial.labels,
        (dataset.image_shape[1], dataset.image_shape[2]),
        None if config.dsa_strategy == "none" else DSAConfig(strategy=config.dsa_strategy),
        torch_device,
        progress,
        StudentStep(template, experts.layout, levers) if levers.active else None,
        inputs,
    )
    generator = torch.Generator().manual_seed(config.seed)
    state = existing or DistillState(
        images=dataset.normalize(dataset.train_images[initial.indices]),
        syn_lr=torch.tensor(config.initial_lr),
    )
    if state.generator_state is not None:
        generator.set_state(state.generator_state)
    cache = Path(stage_cache) if stage_cache is not None else directory / STAGE_CACHE_DIR
    stage_runs = partial(_stage_run, run, dataset, experts, initial, cache, stage_mapper)
    stage_folders = _run_stages(run, stages, state, generator, stage_runs)
    return _write_result(run, dataset, experts, initial, state, stage_folders)


def _run_stages(
    run: _Run,
    stages: list[Stage],
    state: DistillState,
    generator: torch.Generator,
    stage_run: Callable[[DistillState], tuple[_Run, Path | None]],
) -> list[str]:
    """Run the stages from ``state.stage`` on, checkpointing at every boundary (a resume
    starts there), and return the retrained stage experts' folders used."""
    config, folders = run.config, []
    while True:
        this_run, folder = stage_run(state)
        if folder is not None:
            folders.append(str(folder.resolve()))
        _run_stage(this_run, stages[state.stage], state, generator)
        state.stage_lrs.append(float(state.syn_lr))
        if state.stage + 1 >= len(stages):
            return folders
        state.stage, state.iteration = state.stage + 1, 0
        state.image_momentum = state.lr_momentum = None
        if run.target.retrained:  # the authors restart η at its initial value every stage
            state.syn_lr = torch.tensor(config.initial_lr)
        state.generator_state = generator.get_state()
        _save_checkpoint(run, state)


def _stage_run(
    run: _Run,
    dataset: ImageDataset,
    experts: Experts,
    initial: Initial,
    cache: Path,
    mapper: Mapper,
    state: DistillState,
) -> tuple[_Run, Path | None]:
    """The run of stage ``state.stage``: the ordinary experts, or (retrained SeqMatch, stage
    k > 1) the stage experts taught the finished subsets, from the cache or trained now."""
    config, k = run.config, state.stage
    if not run.target.retrained or k == 0:
        return run, None
    assert config.stage_expert_epochs is not None  # resolved()
    earlier_rows = initial.subset_ids < k
    earlier = EarlierSubsets(
        state.images[earlier_rows],
        initial.labels[earlier_rows],
        initial.subset_ids[earlier_rows],
        tuple(state.stage_lrs[:k]),
    )
    expert_config = stage_expert_config(
        experts.config, config.stage_experts, config.stage_expert_epochs
    )
    saved = cached_stage_experts(
        dataset,
        expert_config,
        earlier,
        config.stage_prefix_epochs,
        cache,
        device=run.device,
        progress=run.progress,
        mapper=mapper,
    )
    return replace(run, experts=saved, expert_ids=list(range(config.stage_experts))), (
        saved.directory
    )


def _write_result(
    run: _Run,
    dataset: ImageDataset,
    experts: Experts,
    initial: Initial,
    state: DistillState,
    stage_folders: list[str],
) -> SyntheticSet:
    target, config, directory = run.target, run.config, run.directory
    result = SyntheticSet(
        images=state.images,
        labels=initial.labels,
        distill_mask=initial.distill_mask,
        learned_lr=float(state.syn_lr),
        source_indices=initial.indices,
        manifest={
            "dataset": dataset.name,
            "mean": list(dataset.mean),
            "std": list(dataset.std),
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "ipc": target.ipc,
            "method": target.method,
            "distill": flat_settings(target, config),
            "experts": {
                "directory": str(experts.directory.resolve()),
                "config": experts.config.to_dict(),
                "used": experts.finished,
            },
            **target.method_kind.manifest_extras(target, initial, state.stage_lrs, stage_folders),
            "final_loss": state.losses[-1] if state.losses else None,
            "seconds": state.seconds,
            **initial.info,
        },
    )
    result.save(directory)
    _write_loss_file(directory, state)
    return result


def _write_loss_file(directory: Path, state: DistillState) -> None:
    with open(directory / "loss.csv", "w") as handle:
        handle.write("iteration,loss\n")
        handle.writelines(f"{i + 1},{loss}\n" for i, loss in enumerate(state.losses))


def draw(directory: str | Path) -> list[Path]:
    """The pictures of the distilled set saved in ``directory``: ``grid.png`` (a band of rows
    for ``D_select`` and one for ``D_distill``, a column per class) and ``loss.png`` (the
    matching loss per iteration, from ``loss.csv``). :func:`distill` draws nothing: the
    pictures are made where someone looks at them (the command line, the search's winners),
    not in every trial of a search. Returns the files written."""
    directory = Path(directory)
    saved = SyntheticSet.load(directory)
    manifest = saved.manifest
    mask = saved.distill_mask
    written = [
        save_set_grid(
            denormalize(saved.images, manifest["mean"], manifest["std"]),
            saved.labels,
            [("D_select", ~mask), ("D_distill", mask)],
            manifest["class_names"],
            directory / "grid.png",
        )
    ]
    with open(directory / "loss.csv") as handle:
        losses = [float(line.split(",")[1]) for line in list(handle)[1:]]
    if losses:
        written.append(
            save_curve(
                range(1, len(losses) + 1),
                [("matching loss", losses)],
                directory / "loss.png",
                xlabel="iteration",
                ylabel="loss",
                scale=1.0,
                marker="",
                title=f"{manifest['method']}, IPC {manifest['ipc']}",
            )
        )
    return written
