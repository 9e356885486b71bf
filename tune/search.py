"""The search procedure: per IPC (in increasing order) a β search, then an α search at the
best β, then a full evaluation of the winner.

``run_search`` reads as: ``connect → precompute → for each IPC: search β → search α → final
evaluation → outputs``. The search space contains its baselines: the β phase also evaluates
the random class-balanced subset of the same size (same budget, as many repeats as a close
top gets) and, when it beats every window on validation, the α phase starts from it instead;
the α grid's ends 0 (selection only) and 1 (every image learned) are always evaluated; and
when the α phase starts from a window, plain MTT (the random subset, α = 1) is one more
candidate. So the winner is never worse on validation than the oracle window, the random
subset or MTT at the same budget. Every finished stage is recorded in
``OUT/search_state.json`` (a :class:`~selmatch_tune.record.SearchRecord`); with ``resume=True``
finished stages are skipped and an interrupted Tune experiment is restored (``Tuner.restore``)
rather than started again.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from selmatch.cli.common import check_output
from selmatch.config import ConfigError, SelmatchError
from selmatch.data import ImageDataset, holdout_split, load_dataset
from selmatch.distill import DEFAULT_LR_INIT, DistillConfig
from selmatch_tune.concave import ConcaveGridSampler, grid_index
from selmatch_tune.config import SearchConfig, fit_to_data, validation_warning
from selmatch_tune.costs import format_costs, stage_costs
from selmatch_tune.precompute import Precomputed, precompute
from selmatch_tune.record import (
    STATE,
    Baseline,
    FinalResult,
    FullPoint,
    IpcRecord,
    PhaseResult,
    Point,
    Reference,
    Score,
    SearchRecord,
    StageCost,
    Winner,
    open_record,
)
from selmatch_tune.searcher import ConcaveSearch
from selmatch_tune.tracking import Tracker, TrialLogger
from selmatch_tune.trials import alpha_trial, beta_trial

Log = Callable[[str], None]
METRIC = "val_accuracy"


class SearchInterrupted(SelmatchError):
    """A Tune experiment ended before its search did (Ctrl-C): the state is saved."""


@dataclass
class Phase:
    """One Tune experiment: the β or the α search at one IPC."""

    name: str  # "beta" or "alpha"
    ipc: int
    grid: tuple[float, ...]
    fixed: dict[str, Any]
    anchors: tuple[float, ...] = ()  # grid values always evaluated (α's 0 and 1)
    bound: float | None = None  # the monotone rule's bound (the previous IPC's best)


def _quiet_tune() -> None:
    """Progress is one line per trial from TrialLogger. Tune's own output engine prints boxes
    and paths even at verbose=0, its legacy one stays quiet there; Optuna would log a line per
    study. Warnings still show. Set when a search runs, not when this module is imported."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def check_resources(
    config: SearchConfig, *, wait: float = 0.0, log: Log = print
) -> dict[str, float]:
    """Per-trial resources, checked against the cluster: asking for what it does not have is
    an error now, not a silent hang later. With ``wait`` > 0 (an autoscaling cluster whose
    GPU workers start at zero), the autoscaler is first asked for ``max_concurrent`` trials'
    worth and the check repeats for up to ``wait`` seconds."""
    wanted = {"CPU": config.cpus_per_trial, "GPU": config.gpus_per_trial}
    missing = _missing(wanted)
    if missing and wait > 0:
        from ray.autoscaler.sdk import request_resources

        bundle = {k: v for k, v in wanted.items() if v > 0}
        request_resources(bundles=[bundle] * config.max_concurrent)
        log(f"the cluster has {missing}; asked the autoscaler for {config.max_concurrent} x "
            f"{bundle}, waiting up to {wait:g} s")  # fmt: skip
        deadline = time.monotonic() + wait
        try:
            while missing and time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                missing = _missing(wanted)
        finally:
            if missing:  # given up (or interrupted): never leave nodes requested for nothing
                request_resources(bundles=[])
    if missing:
        waited = f" after waiting {wait:g} s" if wait > 0 else ""
        if "GPU" in missing:
            raise ConfigError(
                f"--gpus-per-trial {config.gpus_per_trial:g} asks for GPUs, but the Ray cluster "
                f"has {missing['GPU']:g}{waited}; use --gpus-per-trial 0, a cluster with GPUs, "
                "or --wait-for-resources SECONDS on an autoscaling cluster"
            )
        raise ConfigError(
            f"--cpus-per-trial must be ≤ {missing['CPU']:g} (the cluster's CPUs{waited}), "
            f"got {config.cpus_per_trial:g}"
        )
    slots = config.stage_slots
    missing = _missing({k: v * (1 + slots) for k, v in wanted.items()}) if slots else {}
    if missing:
        most = int(min(missing[k] / wanted[k] for k in missing)) - 1
        raise ConfigError(
            f"--set stage_parallel must be ≤ {most}: each SeqMatch trial reserves its own "
            f"resources and {slots} more slots of them, and the cluster has {missing}; got "
            f"{slots}"
        )
    return {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}


def _missing(wanted: dict[str, float]) -> dict[str, float]:
    """The kinds of resource the cluster has less of than one trial wants (and how much)."""
    available = ray.cluster_resources()
    return {k: available.get(k, 0.0) for k, v in wanted.items()
            if v > 0 and available.get(k, 0.0) < v}  # fmt: skip


def _bounded(grid: tuple[float, ...], bound: float | None) -> tuple[float, ...]:
    """The paper's monotonicity: at a larger IPC only values ≤ the smaller IPC's best."""
    if bound is None:
        return grid
    kept = tuple(v for v in grid if v <= bound + 1e-12)
    return kept or grid[:1]


def _phase_results(grid: Any, searched: str) -> PhaseResult:
    """Per grid value: mean validation/test accuracy over its completed trials; the
    failed trials are counted but never scored."""
    points: dict[float, list[dict[str, float]]] = {}
    failed = 0
    for result in grid:
        if result.error is not None or not result.metrics or METRIC not in result.metrics:
            failed += 1
            continue
        value = float(result.config[searched])
        points.setdefault(value, []).append(result.metrics)
    curve = {
        value: Point(
            val=sum(m["val_accuracy"] for m in ms) / len(ms),
            test=sum(m["test_accuracy"] for m in ms) / len(ms),
            n=len(ms),
            fetch_seconds=max(m.get("fetch_seconds", 0.0) for m in ms),
            work_seconds=max(m.get("work_seconds", 0.0) for m in ms),
        )
        for value, ms in sorted(points.items())
    }
    if not curve:
        raise SelmatchError(f"every {searched} trial failed; see the Ray log above")
    best = max(curve, key=lambda v: (curve[v].val, -v))
    return PhaseResult(curve=curve, best=best, failed=failed,
                       trials=sum(c.n for c in curve.values()) + failed)  # fmt: skip


def _trial_seconds(grid: Any) -> float:
    """The seconds the trials of a ResultGrid spent fetching their data and working."""
    return sum((r.metrics or {}).get("fetch_seconds", 0.0) + (r.metrics or {}).get(
        "work_seconds", 0.0) for r in grid)  # fmt: skip


def _cost(started: float, grid: Any, config: SearchConfig) -> StageCost:
    """A Tune stage's cost: the wall time since ``started`` (a stage restored on --resume: the
    resumed part), its trials' seconds (all of them) and its slots."""
    return StageCost(time.perf_counter() - started, _trial_seconds(grid), config.max_concurrent)


def _remove_experiment(path: str) -> None:
    """A Tune experiment folder left by an earlier, abandoned run (local or a URI)."""
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    import pyarrow.fs

    filesystem, inner = pyarrow.fs.FileSystem.from_uri(path)
    if filesystem.get_file_info(inner).type != pyarrow.fs.FileType.NotFound:
        filesystem.delete_dir(inner)


def _sampler(phase: Phase, config: SearchConfig) -> ConcaveGridSampler:
    return ConcaveGridSampler(name=phase.name, grid=phase.grid, top_repeats=config.top_repeats,
                              margin=config.noise, tolerance=2 * config.noise,
                              anchors=phase.anchors)  # fmt: skip


def _cap(phase: Phase) -> int:
    return 3 * len(phase.grid) + 2


def search_finished(phase: Phase, config: SearchConfig, grid: Any) -> bool:
    """Whether the concave search would stop on these results: its decision is a pure function
    of the completed trials' scores (:meth:`ConcaveRule.decide`, nothing running)."""
    scores: dict[int, list[float]] = {}
    for result in grid:
        if phase.name not in (result.config or {}):
            continue  # a trial cut off before Tune kept anything of it (Ctrl-C): no score
        value = (result.metrics or {}).get(METRIC) if result.error is None else None
        index = grid_index(phase.grid, float(result.config[phase.name]))
        if value is not None and math.isfinite(float(value)) and index is not None:
            scores.setdefault(index, []).append(float(value))  # as the live search scored them
    return _sampler(phase, config).rule.decide(scores, {}).status == "finished"


def _fit_experiment(
    trial: Callable[..., None], param_space: dict[str, Any], name: str, logger: TrialLogger,
    config: SearchConfig, data: dict[str, Any], storage: str, *, resume: bool, log: Log,
    what: str, search: Callable[[], dict[str, Any]] = dict, slots: int = 0,
) -> Any:  # fmt: skip
    """Restore the interrupted Tune experiment ``name`` under ``storage`` (with ``resume``), or
    start it anew (``search()`` gives a new experiment's search settings); its ResultGrid.
    ``slots`` more bundles of a trial's resources are reserved beside each trial, for the
    Ray tasks it starts (SeqMatch's stage experts)."""
    bundle = {k: v for k, v in (("CPU", config.cpus_per_trial),
                                ("GPU", config.gpus_per_trial)) if v > 0}  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(trial, data=data),
        tune.PlacementGroupFactory([bundle] * (1 + slots)),
    )
    path = f"{storage.rstrip('/')}/{name}"  # a folder, or a URI such as s3://bucket/ray
    if resume and tune.Tuner.can_restore(path):
        log(f"restoring the interrupted {what}")
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                   resume_errored=True)  # fmt: skip
    else:
        _remove_experiment(path)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.max_concurrent,
                # Reusing trial processes saves a process start and the torch import (seconds)
                # per trial; trials free their memory themselves when they end.
                reuse_actors=True,
                **search(),
            ),
            run_config=tune.RunConfig(
                # One line per trial comes from the logger; Tune's own boxes stay off.
                name=name, storage_path=storage, callbacks=[logger], verbose=0,
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
            ),
        )  # fmt: skip
    return tuner.fit()


def run_phase(
    phase: Phase, config: SearchConfig, data: dict[str, Any], storage: str,
    tracker: Tracker, *, markers: Path, resume: bool, log: Log,
) -> tuple[PhaseResult, Any]:  # fmt: skip
    """Run (or restore) one Tune experiment; returns its summary and its ResultGrid."""
    searched = phase.name
    param_space = {searched: tune.choice(list(phase.grid)), **phase.fixed}
    name = f"{searched}-ipc{phase.ipc}"
    logger = TrialLogger(tracker, phase=searched, ipc=phase.ipc, searched=searched, log=log)
    full = len({"beta": config.beta_grid, "alpha": config.alpha_grid,
                "subsets": config.subsets_grid}[searched])  # fmt: skip
    kept = " and the anchors " + ", ".join(f"{a:g}" for a in phase.anchors) if phase.anchors else ""
    bounded = (f" (≤ {phase.bound:g}, the previous IPC's best{kept}: {len(phase.grid)} of {full})"
               if len(phase.grid) < full and phase.bound is not None else "")  # fmt: skip
    shown = {"subsets": "SeqMatch's K"}.get(searched, searched)
    log(f"IPC {phase.ipc}: searching {shown} over {len(phase.grid)} grid values{bounded}, "
        f"{config.max_concurrent} trial(s) at a time")  # fmt: skip
    marker = markers / f"{name}.finished"

    def concave_search() -> dict[str, Any]:
        marker.unlink(missing_ok=True)
        return {
            "search_alg": ConcaveSearch(_sampler(phase, config), metric=METRIC, mode="max",
                                        marker=str(marker), parallel=config.max_concurrent),
            "num_samples": _cap(phase),  # the search finishes itself before this
        }  # fmt: skip

    started = time.perf_counter()
    grid = _fit_experiment(
        beta_trial if searched == "beta" else alpha_trial, param_space, name, logger, config,
        data, storage, resume=resume, log=log,
        what=f"{searched} search at IPC {phase.ipc}", search=concave_search,
        slots=int(phase.fixed.get("stage_parallel", 0)),
    )  # fmt: skip
    path = f"{storage.rstrip('/')}/{name}"
    # Tune ends fit() quietly on Ctrl-C with the trials so far; never take those for a result.
    # Finished: the searcher said so (the marker), or Tune ran out of samples; the replay of
    # the stopping rule covers experiments begun before the marker existed.
    finished = marker.exists() or len(grid) >= _cap(phase)
    if not finished and not search_finished(phase, config, grid):
        raise SearchInterrupted(
            f"the {searched} search at IPC {phase.ipc} was interrupted after {len(grid)} "
            f"trial(s); its state is saved in {path}"
        )
    summary = _phase_results(grid, searched)
    summary.grid = phase.grid
    summary.cost = _cost(started, grid, config)
    log(f"IPC {phase.ipc}: best {shown} = {summary.best:g} "
        f"({summary.trials} trials for {len(phase.grid)} grid values, "
        f"{summary.failed} failed)")  # fmt: skip
    return summary, grid


def run_baseline(
    name: str, phase: str, trial: Callable[..., None], fixed: dict[str, Any], repeats: int,
    config: SearchConfig, data: dict[str, Any], storage: str, tracker: Tracker, *,
    resume: bool, log: Log,
) -> tuple[Baseline, Any]:  # fmt: skip
    """A fixed candidate of a phase (the random subset, plain MTT), evaluated ``repeats``
    times (seeds offset by the repeat, as a grid point's repeats are) in a Tune experiment of
    its own: logged to MLflow like every trial, restored on resume."""
    param_space = {**fixed, "repeat": tune.grid_search(list(range(repeats)))}
    path = f"{storage.rstrip('/')}/{name}"
    logger = TrialLogger(tracker, phase=phase, ipc=fixed["ipc"], searched="init", log=log)
    started = time.perf_counter()
    grid = _fit_experiment(trial, param_space, name, logger, config, data, storage,
                           resume=resume, log=log, what=f"{name} experiment")  # fmt: skip
    results = [grid[i] for i in range(len(grid))]
    scored = [r for r in results if r.error is None and r.metrics and METRIC in r.metrics]
    if len(results) < repeats or any(r.error is None and r not in scored for r in results):
        raise SearchInterrupted(f"the {name} experiment was interrupted; its state is saved "
                                f"in {path}")  # fmt: skip
    if not scored:
        raise SelmatchError(f"every trial of {name} failed; see the Ray log above")
    metrics = [r.metrics for r in scored if r.metrics is not None]
    return Baseline(
        val=sum(m["val_accuracy"] for m in metrics) / len(metrics),
        test=sum(m["test_accuracy"] for m in metrics) / len(metrics),
        n=len(metrics), failed=len(results) - len(metrics),
        work_seconds=max(m.get("work_seconds", 0.0) for m in metrics),
        cost=_cost(started, grid, config),
    ), grid  # fmt: skip


def _experiments_root(record: SearchRecord, out: Path, storage: str | None) -> str:
    """Where this search's Tune experiments live: ``OUT/ray``, or a folder of its own under a
    shared ``--storage`` (searches sharing one must never restore or delete each other's)."""
    if not storage:
        return str(out / "ray")
    if record.storage_id is None:  # new searches get an id; older records kept the bare path
        record.storage_id = "" if record.ipcs else f"{out.name}-{uuid.uuid4().hex[:8]}"
    root = storage.rstrip("/")
    return f"{root}/{record.storage_id}" if record.storage_id else root


def connect(address: str | None, log: Log) -> None:
    """Attach to ``address`` (or ``RAY_ADDRESS``, as a driver of a Ray job has it), else start
    a new local Ray on loopback (selmatch_tune.network)."""
    from selmatch_tune.network import start_local_ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
        log(f"connected to the Ray cluster at {address}")
    else:
        local = start_local_ray(log_to_driver=False)
        log(f"started a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
            f"{local.describe()})")  # fmt: skip


def precompute_all(config: SearchConfig, dataset: ImageDataset, out: Path, log: Log) -> Precomputed:
    started = time.perf_counter()
    gpus_per_expert = 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    pre = precompute(
        dataset, config.experts, score=config.score, cache_root=out.parent / "cache",
        consistency=config.consistency, image_size=config.image_size,
        score_table=Path(config.score_table) if config.score_table else None,
        gpus_per_expert=gpus_per_expert, cpus_per_expert=config.cpus_per_trial, log=log,
    )  # fmt: skip
    networks = ""
    if config.score == "consistency":
        networks = (f"; consistency networks: {pre.consistency_trained} trained, "
                    f"{pre.consistency_reused} reused, in {pre.score_dir}")  # fmt: skip
    log(f"precomputed in {time.perf_counter() - started:.0f} s (experts: {pre.trained} trained, "
        f"{pre.reused} reused{networks})")  # fmt: skip
    return pre


def trial_data(pre: Precomputed) -> dict[str, Any]:
    return {
        "dataset": pre.dataset_ref,
        "hardness": pre.hardness_ref,
        "pool": ray.put(pre.split.pool.numpy()),
        "val": ray.put(pre.split.val.numpy()),
        "trajectories": pre.trajectory_refs,
    }


def fixed_settings(config: SearchConfig, pre: Precomputed, ipc: int) -> dict[str, Any]:
    return {
        "ipc": ipc,
        "beta_convention": config.beta_convention,
        "score": config.score,
        "val_fraction": pre.split.val_fraction,
        "split_seed": pre.split.seed,
        "cpus_per_trial": config.cpus_per_trial,
        "gpus_per_trial": config.gpus_per_trial,
        "evaluation": config.short.to_dict(),
    }


def _final_task(data: dict[str, Any], fixed: dict[str, Any], payload: dict[str, Any],
                evaluation: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Ray task body: full-length evaluation of a window (β point), of a random class-balanced
    subset (the reference) or of a saved set."""
    import numpy as np
    import torch

    from selmatch.evaluate import EvalConfig, evaluate_set
    from selmatch_tune.trials import evaluate_selection, fetch_data, set_threads

    set_threads(fixed)
    dataset, hardness, split = fetch_data(fixed, data)
    config = EvalConfig.from_dict(evaluation)
    if payload["kind"] in ("window", "random"):  # as a β trial trains it, with the full budget
        selection = fixed | {"init": payload["kind"], "beta": payload.get("beta", 0.0)}
        return evaluate_selection(selection, dataset, hardness, split, config).to_dict()
    images = torch.from_numpy(np.array(payload["images"]))
    mask = torch.from_numpy(np.array(payload["mask"]))
    labels = torch.from_numpy(np.array(payload["labels"]))
    # a set with a distilled part is trained with combined augmentation, as in the α trials
    if bool(mask.any()):
        config = config.replace(train=config.train.replace(augment="combined"))
    return evaluate_set(images, labels, dataset, config, split=split, dsa_mask=mask).to_dict()


def collect_winner(grid: Any, value: float, target: Path, searched: str = "alpha") -> Path:
    """Copy the distilled set of the best trial at ``searched`` = ``value`` (its checkpoint)
    into ``target``."""
    from selmatch.distill import draw

    candidates = [
        r for r in grid
        if r.error is None and r.metrics and METRIC in r.metrics and r.checkpoint
        and abs(float(r.config[searched]) - value) < 1e-12
    ]  # fmt: skip
    if not candidates:
        raise SelmatchError(f"no finished {searched} = {value:g} trial left a distilled set")
    best = max(candidates, key=lambda r: r.metrics[METRIC])
    if target.exists():
        shutil.rmtree(target)
    with best.checkpoint.as_directory() as directory:
        shutil.copytree(directory, target)
    draw(target)  # the winner's pictures (trials draw none); fails loudly on an incomplete set
    return target


@dataclass
class EarlyFinal:
    """Full-budget evaluations submitted as soon as what they evaluate is known, so that they
    fill the trial slots the search leaves idle and run beside the next phases and IPCs: the
    random reference at the start of an IPC, the top β windows after its β phase. Only the
    winner's own evaluation waits for the α phase. The results are the same: each is the same
    Ray task with the same payload and seeds, only submitted earlier."""

    reference: Any | None = None
    windows: dict[float, Any] = field(default_factory=dict)


def top_windows(config: SearchConfig, beta: PhaseResult) -> list[float]:
    """The β points evaluated with the full budget too (the short-vs-full rank correlation)."""
    curve = beta.curve
    return sorted(curve, key=lambda b: curve[b].val, reverse=True)[: config.full_eval_top]


def _submit_windows(
    config: SearchConfig, beta: PhaseResult, data: dict[str, Any], fixed: dict[str, Any]
) -> dict[float, Any]:
    task = _final_remote(config)
    return {b: task.remote(data, fixed, {"kind": "window", "beta": b}, config.final.to_dict())
            for b in top_windows(config, beta)}  # fmt: skip


def final_evaluation(
    config: SearchConfig, entry: IpcRecord, data: dict[str, Any], fixed: dict[str, Any],
    early: EarlyFinal | None = None,
) -> FinalResult:  # fmt: skip
    """The winner with the full budget, and the top β points too (short vs full ranking);
    what ``early`` submitted already is awaited, not submitted again. A winner that learned
    nothing (α = 0) *is* a window or the random subset: its evaluation is that one's (the same
    images, seeds and augmentation), never computed twice."""
    from selmatch.synthetic import SyntheticSet

    task = _final_remote(config)
    assert entry.beta is not None
    curve = entry.beta.curve
    early = early or EarlyFinal()
    windows = early.windows or _submit_windows(config, entry.beta, data, fixed)
    selected = entry.selected_as_is()
    if selected == "window" and entry.beta.best in windows:
        winner = windows[entry.beta.best]
    elif selected == "random" and early.reference is not None:
        winner = early.reference  # the reference is the winner: one evaluation
    elif selected == "random":
        winner = task.remote(data, fixed, {"kind": "random"}, config.final.to_dict())
    else:
        assert entry.set_dir is not None
        saved = SyntheticSet.load(entry.set_dir)
        winner = task.remote(data, fixed, {
            "kind": "set", "images": saved.images.numpy(), "labels": saved.labels.numpy(),
            "mask": saved.distill_mask.numpy(),
        }, config.final.to_dict())  # fmt: skip
    result = ray.get(winner)
    full = {b: ray.get(ref) for b, ref in windows.items()}
    return FinalResult(
        test_mean=result["test_mean"], test_std=result["test_std"],
        val_mean=result["val_mean"], seeds=tuple(result["seeds"]), epochs=result["epochs"],
        beta_full={b: FullPoint(short_val=curve[b].val, full_val=r["val_mean"],
                                full_test=r["test_mean"]) for b, r in full.items()},
    )  # fmt: skip


def _final_remote(config: SearchConfig) -> Any:
    return ray.remote(_final_task).options(
        num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial
    )


def _random_reference(config: SearchConfig, data: dict[str, Any], fixed: dict[str, Any]) -> Any:
    """A random class-balanced subset of the IPC, drawn from the same pool as the windows (its
    seed is the split's), trained like the winner: what the distilled set has to beat."""
    return _final_remote(config).remote(data, fixed, {"kind": "random"}, config.final.to_dict())


def _reference_summary(result: dict[str, Any] | FinalResult) -> Reference:
    if isinstance(result, FinalResult):
        result = result.to_dict()
    return Reference(test_mean=result["test_mean"], test_std=result["test_std"],
                     val_mean=result["val_mean"], seeds=tuple(result["seeds"]))  # fmt: skip


def search_ipc(
    ipc: int, config: SearchConfig, pre: Precomputed, data: dict[str, Any],
    record: SearchRecord, out: Path, storage: str, tracker: Tracker, *,
    bounds: tuple[float | None, float | None], resume: bool, log: Log,
) -> Callable[[], None]:  # fmt: skip
    """β search (and the random subset beside it), α search from the β phase's winner (and
    plain MTT beside it): each step once (recorded). Returns what finishes the IPC, its full
    evaluation, whose evaluations already known run beside the search (:class:`EarlyFinal`)
    and are awaited when it is called: after the last IPC's search."""
    from selmatch_tune.outputs import START

    entry = record.at(ipc)
    markers = out / "phases"
    fixed = fixed_settings(config, pre, ipc)
    common = {"config": config, "data": data, "storage": storage, "tracker": tracker,
              "resume": resume, "log": log}  # fmt: skip
    early = EarlyFinal()
    beside = config.final_beside_search
    if beside and config.random_reference and (entry.final is None or entry.final.random is None):
        early.reference = _random_reference(config, data, fixed)
    if entry.beta is None:
        phase = Phase("beta", ipc, _bounded(config.beta_grid, bounds[0]), fixed, (), bounds[0])
        entry.beta, _ = run_phase(phase, config, data, storage, tracker, markers=markers,
                                  resume=resume, log=log)  # fmt: skip
        record.save(out)
    beta = entry.beta
    if beside and entry.final is None:
        early.windows = _submit_windows(config, beta, data, fixed)
    # a search begun before the random candidate existed keeps the α phase it has
    if entry.alpha is None and beta.random is None:
        repeats = 1 + config.top_repeats  # as many as a close top gets
        log(f"IPC {ipc}: the random class-balanced subset as a β-phase candidate "
            f"({repeats} evaluation(s), the windows' budget)")  # fmt: skip
        beta.random, _ = run_baseline(
            f"beta-random-ipc{ipc}", "beta", beta_trial, fixed | {"init": "random"}, repeats,
            **common,
        )  # fmt: skip
        beta.init = beta_winner(beta)
        then = (
            f"the α phase starts from {START[beta.init]}"
            if "selmatch" in config.methods
            else "no α phase (--method seqmatch)"
        )
        log(f"IPC {ipc}: random subset val {100 * beta.random.val:.2f} % vs the best window "
            f"(β = {beta.best:g}) {100 * beta.best_point.val:.2f} %: {then}")  # fmt: skip
        record.save(out)
    if entry.alpha is None and "selmatch" in config.methods:
        search_alpha(ipc, config, pre, entry, fixed, out, markers, bounds[1], common)
        record.save(out)
    if entry.subsets is None and "seqmatch" in config.methods:
        search_subsets(ipc, config, pre, entry, fixed, out, markers, common)
        record.save(out)
    if entry.final is None:
        also = " and of a random subset of the same size" if early.reference is not None else ""
        log(f"IPC {ipc}: final evaluation ({config.final.budget()}, "
            f"{config.final.num_seeds} seeds) of the winner, of the top "
            f"{config.full_eval_top} β windows{also}"
            + (", beside the search" if beside else ""))  # fmt: skip
    return partial(finish_ipc, ipc, config, entry, data, fixed, early, record, out, tracker, log)


def finish_ipc(
    ipc: int, config: SearchConfig, entry: IpcRecord, data: dict[str, Any],
    fixed: dict[str, Any], early: EarlyFinal, record: SearchRecord, out: Path, tracker: Tracker,
    log: Log,
) -> None:  # fmt: skip
    """The IPC's full evaluation (its early part awaited, the winner's submitted), the random
    reference, the curves. The stage's cost is the time the driver waited for it here."""
    from selmatch_tune.outputs import save_phase_plot

    started = time.perf_counter()
    computed = entry.final is None
    if entry.final is None:
        entry.final = final_evaluation(config, entry, data, fixed, early)
    if config.random_reference and entry.final.random is None:
        if entry.selected_as_is() == "random":  # the winner is the reference itself
            entry.final.random = _reference_summary(entry.final)
        else:
            if not computed:  # a search finished before the reference existed
                log(f"IPC {ipc}: final evaluation of a random subset of the same size "
                    "(the reference)")  # fmt: skip
            reference = early.reference or _random_reference(config, data, fixed)
            entry.final.random = _reference_summary(ray.get(reference))
            computed = True
    if computed:
        entry.final.cost = StageCost(time.perf_counter() - started).plus(entry.final.cost)
    record.save(out)
    title = f"{config.short.model.describe()}, {config.short.budget()}"
    xlabels = {"beta": f"β ({config.beta_convention})", "alpha": "α (distilled share)",
               "subsets": "K (SeqMatch subsets)"}  # fmt: skip
    for name, xlabel in xlabels.items():
        summary = getattr(entry, name)
        if summary is None:
            continue
        path = save_phase_plot(out / f"{name}-ipc{ipc}.png", summary, name=name, ipc=ipc,
                               title=title, xlabel=xlabel)  # fmt: skip
        tracker.log_artifact(path, "curves")
    assert entry.set_dir is not None
    tracker.log_artifact(Path(entry.set_dir) / "grid.png", f"sets/ipc{ipc}")


def beta_winner(beta: PhaseResult) -> str:
    """``"random"`` when the random subset beats the best window on validation, else
    ``"window"`` (a tie keeps the window: the method's own initialisation)."""
    assert beta.random is not None
    return "random" if beta.random.val > beta.best_point.val else "window"


def search_alpha(
    ipc: int, config: SearchConfig, pre: Precomputed, entry: IpcRecord,
    fixed: dict[str, Any], out: Path, markers: Path, bound: float | None,
    common: dict[str, Any],
) -> None:  # fmt: skip
    """The α phase from the β phase's winner (its grid's 0 and 1 always evaluated), plain MTT
    beside it when it starts from a window, and the winner's set collected."""
    from selmatch_tune.outputs import START

    assert entry.beta is not None
    init = entry.beta.init or "window"
    distill = config.distill.replace(  # as the trials run it (α is set per trial)
        method="selmatch", init=init, ipc=ipc, beta=entry.beta.best,
        beta_convention=config.beta_convention, score=config.score,
        subset_seed=pre.split.seed,
    )  # fmt: skip
    alpha_fixed = _distill_fixed(config, pre, entry, fixed, distill) | {"init": init}
    anchors = tuple(a for a in (0.0, 1.0) if a in config.alpha_grid)
    grid = tuple(sorted({*_bounded(config.alpha_grid, bound), *anchors}))
    phase = Phase("alpha", ipc, grid, alpha_fixed, anchors, bound)
    alpha, results = run_phase(phase, config, common["data"], common["storage"],
                               common["tracker"], markers=markers, resume=common["resume"],
                               log=common["log"])  # fmt: skip
    entry.alpha = alpha
    alpha.init = init
    winner = Winner(init=init, alpha=alpha.best, candidate="alpha")
    if init == "window" and config.mtt_candidate:
        common["log"](f"IPC {ipc}: plain MTT (the random subset, α = 1) as an α-phase candidate")
        alpha.mtt, mtt_results = run_baseline(
            f"alpha-mtt-ipc{ipc}", "alpha", alpha_trial,
            alpha_fixed | {"init": "random", "alpha": 1.0,
                           "distill": distill.replace(init="random", alpha=1.0).to_dict()},
            1, **common,
        )  # fmt: skip
        best_val = alpha.best_point.val
        common["log"](f"IPC {ipc}: plain MTT val {100 * alpha.mtt.val:.2f} % vs the best α "
                      f"({alpha.best:g}) {100 * best_val:.2f} %")  # fmt: skip
        if alpha.mtt.val > best_val:
            winner, results = Winner(init="random", alpha=1.0, candidate="mtt"), mtt_results
    entry.winner = winner
    common["log"](f"IPC {ipc}: the winner starts from {START[winner.init]}"
                  + (f" (β = {entry.beta.best:g})" if winner.init == "window" else "")
                  + f", α = {winner.alpha:g}"
                  + (" (plain MTT)" if winner.candidate == "mtt" else ""))  # fmt: skip
    entry.set_dir = str(collect_winner(results, winner.alpha, out / "sets" / f"ipc{ipc}"))


def _distill_fixed(
    config: SearchConfig, pre: Precomputed, entry: IpcRecord, fixed: dict[str, Any],
    distill: DistillConfig,
) -> dict[str, Any]:  # fmt: skip
    """What every distillation trial of an IPC shares: its settings, the experts' and where
    the precompute cached them (the set's provenance)."""
    assert entry.beta is not None
    return fixed | {
        "beta": entry.beta.best, "distill": distill.to_dict(),
        "experts": config.experts.to_dict(), "layout": pre.layout.to_dict(),
        "experts_dir": str(pre.cache_dir),
    }  # fmt: skip


def seqmatch_settings(config: SearchConfig, ipc: int, subsets: int) -> DistillConfig:
    """SeqMatch's distillation in the K phase: the search's distillation settings with
    SeqMatch's own learnable-lr start (MTT's 0.01) unless one was set (``--set
    distill.lr_init``), from the random subset, every image learned."""
    distill = config.distill
    lr = None if distill.lr_init == DEFAULT_LR_INIT[distill.method] else distill.lr_init
    # ``init`` is SelMatch's choice (left at its default); SeqMatch starts from random anyway
    return distill.replace(method="seqmatch", init="window", alpha=1.0, ipc=ipc,
                           subsets=subsets, lr_init=lr, beta_convention=config.beta_convention,
                           score=config.score,
                           seqmatch_experts=config.seqmatch_experts)  # fmt: skip


def search_subsets(
    ipc: int, config: SearchConfig, pre: Precomputed, entry: IpcRecord,
    fixed: dict[str, Any], out: Path, markers: Path, common: dict[str, Any],
) -> None:  # fmt: skip
    """SeqMatch as an alternative to the α phase: K from ``subsets_grid`` (values ≤ the IPC),
    every trial a SeqMatch distillation from the random subset evaluated like an α trial;
    its best replaces the α phase's winner (and its set) when it scores higher on validation,
    or is the winner when the α phase does not run (``methods`` without selmatch)."""
    log = common["log"]
    grid = tuple(float(k) for k in config.subsets_grid if k <= ipc)
    if not grid:
        log(f"IPC {ipc}: no K of --subsets-grid {list(config.subsets_grid)} fits IPC {ipc}: "
            "SeqMatch not searched here")  # fmt: skip
        return
    distill = seqmatch_settings(config, ipc, int(grid[0])).replace(subset_seed=pre.split.seed)
    seq_fixed = _distill_fixed(config, pre, entry, fixed, distill) | {
        "method": "seqmatch", "init": "random", "alpha": 1.0, "stage_parallel": config.stage_slots,
    }  # fmt: skip
    phase = Phase("subsets", ipc, grid, seq_fixed)
    subsets, results = run_phase(phase, config, common["data"], common["storage"],
                                 common["tracker"], markers=markers, resume=common["resume"],
                                 log=log)  # fmt: skip
    entry.subsets = subsets
    subsets.seqmatch_experts = distill.seqmatch_experts
    best, seq_val = subsets.best, subsets.best_point.val
    if entry.winner is not None:
        other = entry.winner_scores()
        subsets.against = Score(val=other.val, test=other.test)
        log(f"IPC {ipc}: SeqMatch (K = {best:g}) val {100 * seq_val:.2f} % vs the α phase's "
            f"winner {100 * other.val:.2f} %")  # fmt: skip
        if seq_val <= other.val:  # a tie keeps SelMatch, the search's own method
            return
    entry.winner = Winner(init="random", alpha=1.0, candidate="seqmatch", subsets=int(best))
    log(f"IPC {ipc}: the winner is SeqMatch with K = {best:g} subsets "
        f"({distill.seqmatch_experts} stage experts)")  # fmt: skip
    target = out / "sets" / f"ipc{ipc}"
    entry.set_dir = str(collect_winner(results, best, target, searched="subsets"))


def prepare(
    config: SearchConfig, out: Path, *, resume: bool, data_root: str | None,
    skip_bad_images: bool = False, log: Log = print,
) -> tuple[SearchConfig, ImageDataset, SearchRecord]:  # fmt: skip
    """What a search checks before it starts anything: the data loads (``skip_bad_images``:
    leaving out, and counting, the image files that cannot be decoded), the settings are
    fitted to it (``fit_to_data``), and ``out`` holds no search or (``resume``) this one.
    Nothing is written."""
    check_output(out, "folder")
    dataset = load_dataset(config.dataset, data_root=data_root, image_size=config.image_size,
                           skip_bad_images=skip_bad_images)  # fmt: skip
    log(dataset.describe())
    skipped = dataset.skipped_summary()
    if skipped:
        log(f"WARNING: {skipped}")
    # fitting changes no setting of the split: the experts' one holds for the fitted config
    split = holdout_split(dataset.train_labels, dataset.num_classes,
                          val_fraction=config.experts.val_fraction,
                          seed=config.experts.split_seed)  # fmt: skip
    config, changes = fit_to_data(config, dataset.train_labels, dataset.num_classes, split)
    for change in changes:
        log(f"fitted to {config.dataset}: {change}")
    warning = validation_warning(config, len(split.val))
    if warning:
        log(warning)
    return config, dataset, open_record(out, config, resume, log=log)


def run_search(
    config: SearchConfig, out: Path, *, resume: bool = False, tracking_uri: str | None = None,
    address: str | None = None, data_root: str | None = None, storage: str | None = None,
    wait_for_resources: float = 0.0, skip_bad_images: bool = False, log: Log = print,
) -> list[dict[str, Any]]:  # fmt: skip
    """The whole search; returns the per-IPC rows of ``best_hparams.csv``."""
    from selmatch_tune.outputs import (
        below_random,
        format_table,
        mean_rank_correlation,
        predict,
        rank_correlations,
        table_rows,
        write_table,
    )
    from selmatch_tune.tracking import default_tracking_uri

    out = out.resolve()
    config, dataset, record = prepare(config, out, resume=resume, data_root=data_root,
                                      skip_bad_images=skip_bad_images, log=log)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _quiet_tune()
    connect(address, log)
    check_resources(config, wait=wait_for_resources, log=log)
    # A local store (the default, or a database file named by --tracking-uri) keeps its new
    # experiment's artifacts next to the search, not in ./mlruns of the current directory; a
    # tracking server decides that itself.
    uri = tracking_uri or default_tracking_uri(out)
    local = uri.startswith(("sqlite:", "file:", "/"))
    tracker = Tracker(uri, artifacts=out / "mlartifacts" if local else None)
    record.parent_run_id = tracker.start_parent(
        f"search-{config.dataset}-{config.preset}", config.to_dict(), record.parent_run_id
    )
    # Params are frozen at the first run; --ipcs may grow on resume, so a tag says what is now.
    tracker.client.set_tag(record.parent_run_id, "ipcs", ",".join(map(str, config.ipcs)))
    record.save(out)
    started = time.perf_counter()
    try:
        pre = precompute_all(config, dataset, out, log)
        record.precompute = StageCost(time.perf_counter() - started).plus(record.precompute)
        record.score_dir = str(pre.score_dir)  # where the ranking came from (a study reads it)
        record.started = True  # from here on, the folder holds a search
        data = trial_data(pre)
        storage_path = _experiments_root(record, out, storage)
        record.save(out)  # the experiments' folder must be found again on --resume
        previous: IpcRecord | None = None
        finishers: list[Callable[[], None]] = []
        for ipc in config.ipcs:
            bounds: tuple[float | None, float | None] = (None, None)
            if config.monotone and previous is not None and previous.beta is not None:
                bounds = (previous.beta.best, previous.alpha.best if previous.alpha else None)
            finish = search_ipc(ipc, config, pre, data, record, out, storage_path, tracker,
                                bounds=bounds, resume=resume, log=log)  # fmt: skip
            if config.final_beside_search:
                finishers.append(finish)
            else:
                finish()
            previous = record.ipcs[ipc]
        for finish in finishers:  # the full evaluations, begun beside the search
            finish()
    except BaseException:
        tracker.finish(failed=True)
        raise
    finally:
        if wait_for_resources > 0:  # let the autoscaler remove idle workers again
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
    rows = table_rows(config.dataset, config.beta_convention, record)
    table = write_table(out / "best_hparams.csv", rows)
    by_ipc = rank_correlations(record)
    record.rank_correlation_by_ipc = by_ipc
    record.rank_correlation_short_vs_full = mean_rank_correlation(by_ipc)
    record.seconds = (record.seconds or 0.0) + time.perf_counter() - started
    record.save(out)
    cost_table = format_costs(stage_costs(record))
    costs = out / "costs.md"
    costs.write_text(f"# What this search cost, by stage\n\n{cost_table}\n")
    for path in (table, out / STATE, costs):
        tracker.log_artifact(path)
    tracker.log_parent_metrics({
        **{f"final_test_ipc{r['ipc']}": r["final_test_mean"] for r in rows},
        **{f"random_test_ipc{r['ipc']}": r["random_test_mean"] for r in rows
           if r["random_test_mean"] != ""},
        **{f"rank_correlation_ipc{ipc}": rho for ipc, rho in by_ipc.items() if rho is not None},
    })  # fmt: skip
    tracker.finish()
    log(format_table(rows))
    for warning in below_random(rows):
        log(warning)
    ranks = ", ".join(
        f"IPC {ipc} " + ("n/a (fewer than 3 points; raise --full-eval-top)" if rho is None
                         else f"{rho:.2f}")
        for ipc, rho in by_ipc.items()
    )  # fmt: skip
    log(f"rank correlation of short vs full evaluation of the β points, within each IPC: {ranks}")
    searched = {int(r["ipc"]): r for r in rows}
    unsearched = tuple(ipc for ipc in config.predict_ipcs if ipc not in searched)
    if unsearched:
        betas = predict({k: r["beta"] for k, r in searched.items()}, unsearched)
        alphas = predict({k: r["alpha"] for k, r in searched.items()}, unsearched)
        log("WARNING: predicted, not searched (the paper calls predicting α*, β* an open problem):")
        for ipc in unsearched:
            log(f"  IPC {ipc}: β ≈ {betas[ipc]:.3g}, α ≈ {alphas[ipc]:.3g}")
    log(f"cost by stage (wall seconds over the whole search):\n{cost_table}")
    log(f"table: {table}; distilled sets: {out / 'sets'}; curves: {out}/*-ipc*.png; costs: {costs}")
    log(f"MLflow: {tracker.uri} (experiment {tracker.experiment_id}, parent run "
        f"{tracker.parent_id}); Ray results: {storage_path}")  # fmt: skip
    for line in tracker.ui_hint():
        log(line)
    return rows
