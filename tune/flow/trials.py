"""Trial bodies: what one Ray Tune trial of the β search and of the α search does.

Both are plain functions of a config dict and the object references of the precomputed data;
everything they report is one final result (so a failed trial never leaves a score behind):
``val_accuracy`` (what the search ranks by), ``test_accuracy`` (reported, never used to
choose), their standard deviations over seeds, and the trial's seconds split into Ray
overhead (getting the data) and work.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import ray
import torch
from ray import tune

from selmatch.core.config import Config
from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.distillation.distill import DistillConfig, distill
from selmatch.distillation.methods import method_of
from selmatch.distillation.target import SetSpec
from selmatch.evaluation.evaluate import EvalConfig, EvalResult, evaluate_set
from selmatch.evaluation.sweep import evaluate_random, evaluate_window
from selmatch.selection.initial import RandomInit
from selmatch.selection.window import WindowSpec
from selmatch.training.experts import ExpertConfig, InMemoryExperts, Mapper, TrainOne
from selmatch.training.params import ParamLayout
from selmatch_tune.cluster.devices import prepare_worker
from selmatch_tune.flow.precompute import dataset_from_arrays
from selmatch_tune.settings.phase_kinds import PHASES, phase_kind


@dataclass(frozen=True)
class TrialSpec(Config):
    """Everything one trial needs, built once on the driver (``fixed_settings``, then each
    phase's ``replace``): Tune's param space is its dict with the searched leaf (``beta``,
    ``alpha`` or ``subsets``) as the choice, and a trial rebuilds it once
    (``TrialSpec.from_dict(config)``). Its keys are those the search's param spaces always
    had, so an experiment begun by an earlier version restores.

    The selection: ``ipc``, ``init`` (window or random), ``beta`` read by ``beta_convention``
    on ``score``; the distillation (α and K trials): ``method``, ``alpha``, ``subsets`` and
    ``seqmatch_experts``, the set a trial makes (:meth:`target`), and the search's matching
    settings ``distill``, the same for every trial (:meth:`matching`); the evaluation;
    ``repeat`` (the k-th evaluation of a point trains with the next seeds); the split it must
    use and the trial's resources."""

    ipc: int
    beta_convention: str
    score: str
    val_fraction: float
    split_seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    evaluation: EvalConfig
    init: str = "window"
    beta: float | None = None
    alpha: float | None = None
    method: str = "selmatch"
    subsets: int | None = None
    seqmatch_experts: str = "segment"
    repeat: int = 0
    distill: DistillConfig | None = None
    experts: ExpertConfig | None = None
    layout: dict[str, Any] | None = None
    experts_dir: str | None = None
    stage_parallel: int = 0

    def seeded(self, evaluation: EvalConfig | None = None) -> EvalConfig:
        """The evaluation (``evaluation``: another budget) with this repeat's seeds."""
        evaluation = evaluation or self.evaluation
        return evaluation.replace(seed=evaluation.seed + self.repeat * evaluation.num_seeds)

    def window(self) -> WindowSpec:
        assert self.beta is not None, "a window trial has a β"
        return WindowSpec(self.ipc, self.beta, 0.0, self.beta_convention)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSpec:
        """Also a param space written before the set's spec left ``distill``: its SeqMatch
        variant was ``distill.seqmatch_experts`` (the set's other keys there were the
        trial's own, always overwritten)."""
        spec = dict(data)
        legacy = spec.get("distill") or {}
        if "seqmatch_experts" not in spec and "seqmatch_experts" in legacy:
            spec["seqmatch_experts"] = legacy["seqmatch_experts"]
        # a phase whose value lives deeper in the spec (T+: distill.max_start_epoch) is
        # Tune's choice at the top, under its name: set where the phase says
        for kind in PHASES.values():
            if kind.sets is not None and kind.name in spec:
                spec = kind.applied(spec, spec.pop(kind.name))
        return cast(TrialSpec, super().from_dict(spec))

    def with_value(self, name: str, value: float) -> TrialSpec:
        """This spec with the registered phase ``name``'s value set (a winner's refined
        settings)."""
        return TrialSpec.from_dict(phase_kind(name).applied(self.to_dict(), value))

    def target(self) -> SetSpec:
        """The set this trial makes: its selection and searched value. A random start's seed
        is the split's (the random subset the β phase and the final reference evaluate).
        SeqMatch always starts from the random subset and learns every image (``init`` is
        SelMatch's option, left at its default)."""
        searched: dict[str, Any] = {"alpha": self.alpha, "init": self.init}
        if method_of(self.method).sequential:
            searched = {
                "subsets": int(self.subsets or 2),
                "alpha": 1.0,
                "seqmatch_experts": self.seqmatch_experts,
            }
        return SetSpec(
            method=self.method,
            ipc=self.ipc,
            beta=self.beta or 0.0,
            beta_convention=self.beta_convention,
            score=self.score,
            subset_seed=self.split_seed,
            **searched,
        )

    def matching(self) -> DistillConfig:
        """The search's matching settings, with this repeat's seed."""
        assert self.distill is not None, "a distillation trial carries the matching settings"
        return self.distill.replace(seed=self.distill.seed + self.repeat)


def _release() -> None:
    """Trial processes are reused: give cached GPU memory back between trials."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_threads(spec: TrialSpec) -> None:
    """A trial's worker prepared: its threads, and its GPU checked
    (:func:`~selmatch_tune.cluster.devices.prepare_worker`)."""
    prepare_worker(spec.cpus_per_trial, spec.gpus_per_trial, spec.evaluation.device)


@dataclass(frozen=True)
class TrialData:
    """What the precompute put in Ray's object store once, for every trial and final
    evaluation: the dataset's arrays, the hardness vector, the hold-out split's pool and
    validation indices and each expert's trajectory (epochs ``first_epoch`` on), as object
    references (a trial fetches what it reads)."""

    dataset: Any
    hardness: Any
    pool: Any
    val: Any
    trajectories: tuple[Any, ...]
    first_epoch: int = 0


def fetch_data(spec: TrialSpec, data: TrialData) -> tuple[ImageDataset, torch.Tensor, HoldoutSplit]:
    """The dataset, the hardness vector and the hold-out split, from the object store."""
    dataset = dataset_from_arrays(ray.get(data.dataset))
    hardness = torch.from_numpy(np.array(ray.get(data.hardness)))
    split = HoldoutSplit(
        torch.from_numpy(np.array(ray.get(data.pool))),
        torch.from_numpy(np.array(ray.get(data.val))),
        spec.val_fraction,
        spec.split_seed,
    )
    return dataset, hardness, split


class ObjectStoreTrajectories(Sequence[np.ndarray]):
    """The experts' trajectories in Ray's object store, fetched when indexed: a read-only,
    zero-copy view of one expert (pulled to this node if it lives on another), released as
    soon as the caller has copied the snapshots it matches. A trial therefore holds one
    segment at a time, however many experts there are; nothing stays pinned in the store."""

    def __init__(self, refs: Sequence[ray.ObjectRef]) -> None:
        self.refs = list(refs)

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [ray.get(ref) for ref in self.refs[index]]
        return ray.get(self.refs[index])


def _metrics(result: EvalResult, started: float, fetched: float) -> dict[str, Any]:
    val_mean, val_std = result.val_mean_std
    test_mean, test_std = result.test_mean_std
    if not math.isfinite(val_mean):
        raise RuntimeError("the trial produced no finite validation accuracy")
    return {
        "val_accuracy": val_mean,
        "val_std": val_std,
        "test_accuracy": test_mean,
        "test_std": test_std,
        "fetch_seconds": fetched - started,
        "work_seconds": time.perf_counter() - fetched,
        "node_id": ray.get_runtime_context().get_node_id(),
        "gpus": len(ray.get_gpu_ids()),
    }


def beta_trial(config: dict[str, Any], *, data: TrialData) -> None:
    """Window subset at β → short-epoch evaluation (no distillation). With ``init="random"``:
    the β phase's baseline, the random class-balanced subset of the same size (the one the
    final reference and a random-initialised α phase use: its seed is the split's)."""
    started = time.perf_counter()
    spec = TrialSpec.from_dict(config)
    set_threads(spec)
    dataset, hardness, split = fetch_data(spec, data)
    fetched = time.perf_counter()
    result = evaluate_selection(spec, dataset, hardness, split, spec.seeded())
    _release()
    tune.report(_metrics(result, started, fetched))


def evaluate_selection(
    spec: TrialSpec,
    dataset: ImageDataset,
    hardness: torch.Tensor,
    split: HoldoutSplit,
    evaluation: EvalConfig,
) -> EvalResult:
    """A selection trained as it is: the window at β or, with ``init = "random"``, the random
    class-balanced subset whose seed is the split's. The one body of a β trial (the short
    budget) and of a selection's final evaluation (the full budget)."""
    if spec.init == RandomInit.kind:
        return evaluate_random(dataset, split, spec.ipc, evaluation, seed=spec.split_seed)
    return evaluate_window(dataset, split, hardness, spec.window(), evaluation)


def stage_expert_mapper(spec: TrialSpec) -> Mapper:
    """How a K trial trains SeqMatch's retrained stage experts: with ``stage_parallel`` = 0,
    in the trial one after another (``map``); else as Ray tasks, one per expert, in the
    ``stage_parallel`` slots reserved beside the trial in its placement group (each a trial's
    CPUs and GPUs), so they can never wait on resources other trials hold."""
    slots, cpus, gpus = spec.stage_parallel, spec.cpus_per_trial, spec.gpus_per_trial
    if slots == 0:
        return map

    def mapper(train: TrainOne, indices: Iterable[int]) -> Iterator[Any]:
        task = ray.remote(_train_one).options(num_cpus=cpus, num_gpus=gpus)
        train_ref = ray.put(train)
        refs = [task.remote(train_ref, index, cpus) for index in indices]
        for ref in refs:
            yield ray.get(ref)

    return mapper


def _train_one(train: TrainOne, index: int, cpus: float) -> Any:
    """Ray task body: one stage expert, with as many threads as the task has CPUs."""
    torch.set_num_threads(max(1, int(cpus)))  # the trial checked its GPU
    result = train(index)
    _release()
    return result


def alpha_trial(config: dict[str, Any], *, data: TrialData) -> None:
    """A distillation → short-epoch evaluation of the set with combined augmentation (DSA on
    ``D_distill``, crop+flip on ``D_select``); the set goes back to storage as the trial's
    checkpoint, so the winner's set can be collected.

    - ``method="selmatch"`` (the α phase): SelMatch at (β, α) from the window, or at α from
      the random subset (``init="random"``; α = 1 is then plain MTT). α = 0 learns nothing:
      the set is its initialisation, evaluated as the β trials evaluate it (so α = 0 from the
      window *is* the oracle window).
    - ``method="seqmatch"`` (the K phase): SeqMatch with ``subsets`` = K from the random
      subset, every image learned; retrained stage experts (``seqmatch_experts``)
      are trained as parallel Ray tasks (:func:`stage_expert_mapper`)."""
    started = time.perf_counter()
    spec = TrialSpec.from_dict(config)
    set_threads(spec)
    dataset, hardness, split = fetch_data(spec, data)
    fetched = time.perf_counter()
    evaluation = spec.seeded()
    # α = 0 is the oracle window (or the random subset) as it was; α > 0: combined
    target = spec.target()
    augment = target.method_kind.evaluation_augment(target, evaluation.train.augment)
    evaluation = evaluation.replace(train=evaluation.train.replace(augment=augment))
    with tempfile.TemporaryDirectory() as directory:
        synthetic = distill_set(spec, data, (dataset, hardness, split), directory)
        result = evaluate_set(
            synthetic.images,
            synthetic.labels,
            dataset,
            evaluation,
            split=split,
            dsa_mask=synthetic.distill_mask,
        )
        metrics = _metrics(result, started, fetched) | {
            "final_loss": synthetic.manifest["final_loss"],
            "learned_lr": synthetic.learned_lr,
        }
        _release()
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def distill_set(
    spec: TrialSpec,
    data: TrialData,
    fetched: tuple[ImageDataset, torch.Tensor, HoldoutSplit],
    directory: str | Path,
) -> Any:
    """The set a distillation trial makes, written to ``directory``: ``spec``'s target
    matched with its settings against the experts in the object store (α = 0: the selection
    itself, nothing learned). The body of an α or K trial, and how the driver writes the set
    of a selection that wins at the target budget."""
    dataset, hardness, split = fetched
    assert spec.experts is not None and spec.layout is not None and spec.experts_dir
    experts = InMemoryExperts(
        spec.experts,
        ParamLayout.from_dict(spec.layout),
        ObjectStoreTrajectories(data.trajectories),
        Path(spec.experts_dir),  # where the precompute cached them: the set's provenance
        first_epoch=data.first_epoch,
    )
    with tempfile.TemporaryDirectory() as stages:
        return distill(
            spec.target(),
            spec.matching(),
            dataset,
            split,
            experts,
            hardness,
            directory,
            device=spec.evaluation.device,
            progress=False,
            stage_cache=stages,
            stage_mapper=stage_expert_mapper(spec),
        )
