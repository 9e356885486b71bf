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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.distill import DistillConfig, distill
from selmatch.evaluate import EvalConfig, EvalResult, evaluate_set
from selmatch.experts import ExpertConfig, InMemoryExperts, Mapper, TrainOne
from selmatch.params import ParamLayout
from selmatch.sweep import evaluate_random, evaluate_window
from selmatch.window import WindowSpec
from selmatch_tune.precompute import dataset_from_arrays


def _release() -> None:
    """Trial processes are reused: give cached GPU memory back between trials."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_threads(config: dict[str, Any]) -> None:
    # One intra-op thread per CPU the trial was given: trials side by side must not
    # oversubscribe the cores (OpenMP spinning turns that into a 10x slowdown).
    torch.set_num_threads(max(1, int(config["cpus_per_trial"])))


def _repeat_seeds(evaluation: EvalConfig, config: dict[str, Any]) -> EvalConfig:
    """The k-th repeat of a grid point trains with the next ``num_seeds`` seeds."""
    repeat = int(config.get("repeat", 0))
    return evaluation.replace(seed=evaluation.seed + repeat * evaluation.num_seeds)


def fetch_data(
    config: dict[str, Any], data: dict[str, Any]
) -> tuple[ImageDataset, torch.Tensor, HoldoutSplit]:
    """The dataset, the hardness vector and the hold-out split, from the object store."""
    dataset = dataset_from_arrays(ray.get(data["dataset"]))
    hardness = torch.from_numpy(np.array(ray.get(data["hardness"])))
    split = HoldoutSplit(
        torch.from_numpy(np.array(ray.get(data["pool"]))),
        torch.from_numpy(np.array(ray.get(data["val"]))),
        config["val_fraction"], config["split_seed"],
    )  # fmt: skip
    return dataset, hardness, split


def _metrics(result: EvalResult, started: float, fetched: float) -> dict[str, Any]:
    val_mean, val_std = result.val_mean_std
    test_mean, test_std = result.test_mean_std
    if not math.isfinite(val_mean):
        raise RuntimeError("the trial produced no finite validation accuracy")
    return {
        "val_accuracy": val_mean, "val_std": val_std,
        "test_accuracy": test_mean, "test_std": test_std,
        "fetch_seconds": fetched - started, "work_seconds": time.perf_counter() - fetched,
        "node_id": ray.get_runtime_context().get_node_id(),
    }  # fmt: skip


def beta_trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    """Window subset at β → short-epoch evaluation (no distillation). With ``init="random"``:
    the β phase's baseline, the random class-balanced subset of the same size (the one the
    final reference and a random-initialised α phase use: its seed is the split's)."""
    started = time.perf_counter()
    set_threads(config)
    dataset, hardness, split = fetch_data(config, data)
    fetched = time.perf_counter()
    evaluation = _repeat_seeds(EvalConfig.from_dict(config["evaluation"]), config)
    result = evaluate_selection(config, dataset, hardness, split, evaluation)
    _release()
    tune.report(_metrics(result, started, fetched))


def evaluate_selection(
    config: Mapping[str, Any], dataset: ImageDataset, hardness: torch.Tensor,
    split: HoldoutSplit, evaluation: EvalConfig,
) -> EvalResult:  # fmt: skip
    """A selection trained as it is: the window at ``config["beta"]`` or, with ``init =
    "random"``, the random class-balanced subset whose seed is the split's. The one body of a
    β trial (the short budget) and of a selection's final evaluation (the full budget)."""
    if config.get("init") == "random":
        return evaluate_random(dataset, split, config["ipc"], evaluation,
                               seed=config["split_seed"])  # fmt: skip
    spec = WindowSpec(config["ipc"], config["beta"], 0.0, config["beta_convention"])
    return evaluate_window(dataset, split, hardness, spec, evaluation)


def stage_expert_mapper(config: dict[str, Any]) -> Mapper:
    """How a K trial trains SeqMatch's retrained stage experts: with ``stage_parallel`` = 0,
    in the trial one after another (``map``); else as Ray tasks, one per expert, in the
    ``stage_parallel`` slots reserved beside the trial in its placement group (each a trial's
    CPUs and GPUs), so they can never wait on resources other trials hold."""
    slots = int(config.get("stage_parallel", 0))
    cpus, gpus = float(config["cpus_per_trial"]), float(config.get("gpus_per_trial", 0.0))
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
    torch.set_num_threads(max(1, int(cpus)))
    result = train(index)
    _release()
    return result


def alpha_trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    """A distillation → short-epoch evaluation of the set with combined augmentation (DSA on
    ``D_distill``, crop+flip on ``D_select``); the set goes back to storage as the trial's
    checkpoint, so the winner's set can be collected.

    - ``method="selmatch"`` (the α phase): SelMatch at (β, α) from the window, or at α from
      the random subset (``init="random"``; α = 1 is then plain MTT). α = 0 learns nothing:
      the set is its initialisation, evaluated as the β trials evaluate it (so α = 0 from the
      window *is* the oracle window).
    - ``method="seqmatch"`` (the K phase): SeqMatch with ``subsets`` = K from the random
      subset, every image learned; retrained stage experts (``distill.seqmatch_experts``)
      are trained as parallel Ray tasks (:func:`stage_expert_mapper`)."""
    started = time.perf_counter()
    set_threads(config)
    dataset, hardness, split = fetch_data(config, data)
    experts = InMemoryExperts(
        ExpertConfig.from_dict(config["experts"]),
        ParamLayout.from_dict(config["layout"]),
        [torch.from_numpy(np.array(ray.get(ref))) for ref in data["trajectories"]],
        Path(config["experts_dir"]),  # where the precompute cached them: the set's provenance
    )
    fetched = time.perf_counter()
    # The window must be read exactly as in the β search: same β convention.
    distill_config = DistillConfig.from_dict(config["distill"])
    method = config.get("method", "selmatch")
    searched: dict[str, Any] = {"alpha": config["alpha"], "init": config.get("init", "window")}
    if method == "seqmatch":
        # SeqMatch always starts from the random subset (``init`` is SelMatch's option)
        searched = {"subsets": int(config["subsets"]), "alpha": 1.0, "init": "window"}
    distill_config = distill_config.replace(
        method=method, beta=config["beta"], ipc=config["ipc"],
        beta_convention=config["beta_convention"], score=config["score"],
        subset_seed=config["split_seed"], seed=distill_config.seed + int(config.get("repeat", 0)),
        **searched,
    )  # fmt: skip
    evaluation = _repeat_seeds(EvalConfig.from_dict(config["evaluation"]), config)
    if distill_config.alpha > 0:  # α = 0 is the oracle window (or the random subset) as it was
        evaluation = evaluation.replace(train=evaluation.train.replace(augment="combined"))
    with tempfile.TemporaryDirectory() as directory, tempfile.TemporaryDirectory() as stages:
        synthetic = distill(distill_config, dataset, split, experts, hardness, directory,
                            device=evaluation.device, progress=False, stage_cache=stages,
                            stage_mapper=stage_expert_mapper(config))  # fmt: skip
        result = evaluate_set(synthetic.images, synthetic.labels, dataset, evaluation,
                              split=split, dsa_mask=synthetic.distill_mask)  # fmt: skip
        metrics = _metrics(result, started, fetched) | {
            "final_loss": synthetic.manifest["final_loss"], "learned_lr": synthetic.learned_lr,
        }  # fmt: skip
        _release()
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
