"""One phase of the search as a Tune experiment: a grid searched by the concave sampler (β,
α or K at one IPC) or a fixed candidate evaluated a few times (the random subset, plain MTT);
restored on resume, told finished from interrupted, summarised as a
:class:`~selmatch_tune.results.record.PhaseResult` or
:class:`~selmatch_tune.results.record.Baseline`."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from selmatch.core.config import SelmatchError
from selmatch_tune.flow.concave import ConcaveGridSampler, grid_index, measured_noise
from selmatch_tune.flow.searcher import ConcaveSearch
from selmatch_tune.flow.trials import TrialData, TrialSpec
from selmatch_tune.results.record import Baseline, PhaseResult, Point, StageCost
from selmatch_tune.results.tracking import Tracker, TrialLogger
from selmatch_tune.settings.config import SearchConfig
from selmatch_tune.settings.phase_kinds import PhaseKind, phase_kind

Log = Callable[[str], None]


METRIC = "val_accuracy"


class SearchInterrupted(SelmatchError):
    """A Tune experiment ended before its search did (Ctrl-C): the state is saved."""


@dataclass
class SearchContext:
    """What every Tune experiment of a search shares: its settings, the precomputed data in
    the object store, where Tune keeps its experiments (``storage``: a folder or a URI), the
    MLflow tracker, the search's folder (its ``phases/`` holds the markers of finished
    phases), whether this run resumes one, and where progress lines go."""

    config: SearchConfig
    data: TrialData
    storage: str
    tracker: Tracker
    out: Path
    resume: bool
    log: Log

    @property
    def markers(self) -> Path:
        return self.out / "phases"


@dataclass
class Phase:
    """One Tune experiment: a registered phase's search at one IPC."""

    name: str  # a key of selmatch_tune.settings.phase_kinds.PHASES
    ipc: int
    grid: tuple[float, ...]
    fixed: TrialSpec  # what every trial shares; the searched leaf is Tune's choice
    anchors: tuple[float, ...] = ()  # grid values always evaluated (α's 0 and 1)
    bound: float | None = None  # the monotone rule's bound (the previous IPC's best)
    #: the noise measured at the IPC before this phase (the β phase's repeats of the random
    #: subset, say): the sampler's tie margin is at least this
    noise: float = 0.0

    @property
    def kind(self) -> PhaseKind:
        return phase_kind(self.name)


def monotone_bound(
    phase: PhaseResult | None, margin: float, measured: float = 0.0
) -> tuple[float | None, str]:
    """The bound a phase's result at one IPC puts on the next IPC's grid (the paper's
    monotonicity: values ≤ its best), and why. It caps the grid only when the best beat every
    larger value evaluated by more than the noise (``margin``, the phase's measured noise or
    ``measured``, the noise measured at its IPC, whichever is largest); a best within the noise
    of a larger value is no evidence against it, so the next IPC searches its whole grid."""
    if phase is None:
        return None, ""
    noise = max(margin, phase.noise or 0.0, measured)
    best = phase.best_point.val
    larger = {v: p.val for v, p in phase.curve.items() if v > phase.best}
    close = [v for v, val in larger.items() if val >= best - noise]
    if close:
        return None, (
            f"no bound from the previous IPC's best {phase.best:g}: {close[0]:g} was within "
            f"the noise ({100 * noise:.2f} points)"
        )
    return phase.best, (
        f"≤ {phase.best:g}, the previous IPC's best, which beat every larger value evaluated "
        f"by more than the noise ({100 * noise:.2f} points)"
    )


def bounded(grid: tuple[float, ...], bound: float | None) -> tuple[float, ...]:
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
        raise SelmatchError(f"every {searched} trial failed{first_error(grid)}")
    best = max(curve, key=lambda v: (curve[v].val, -v))
    return PhaseResult(
        curve=curve,
        best=best,
        failed=failed,
        trials=sum(c.n for c in curve.values()) + failed,
        noise=measured_noise([[m["val_accuracy"] for m in ms] for ms in points.values()]),
    )


def first_error(grid: Any) -> str:
    """``: the first: <its last line>`` for a grid whose trials failed (the error a trial
    raised on purpose is one line: a GPU it cannot see, a diverged distillation), else where
    to look."""
    for result in grid:
        if result.error is not None:
            cause = getattr(result.error, "cause", None) or result.error
            lines = [line for line in str(cause).strip().splitlines() if line.strip()]
            if lines:
                return f"; the first: {lines[-1].strip()}"
    return "; see the Ray log above"


def _trial_seconds(grid: Any) -> float:
    """The seconds the trials of a ResultGrid spent fetching their data and working."""
    return sum(
        (r.metrics or {}).get("fetch_seconds", 0.0) + (r.metrics or {}).get("work_seconds", 0.0)
        for r in grid
    )


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
    return ConcaveGridSampler(
        name=phase.name,
        grid=phase.grid,
        top_repeats=config.top_repeats,
        margin=max(config.noise, phase.noise),
        tolerance=2 * max(config.noise, phase.noise),
        anchors=phase.anchors,
    )


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
    trial: Callable[..., None],
    param_space: dict[str, Any],
    name: str,
    logger: TrialLogger,
    ctx: SearchContext,
    *,
    what: str,
    search: Callable[[], dict[str, Any]] = dict,
    slots: int = 0,
) -> Any:
    """Restore the interrupted Tune experiment ``name`` under the context's storage (when it
    resumes), or start it anew (``search()`` gives a new experiment's search settings); its
    ResultGrid. ``slots`` more bundles of a trial's resources are reserved beside each trial,
    for the Ray tasks it starts (SeqMatch's stage experts)."""
    config, data, storage, log = ctx.config, ctx.data, ctx.storage, ctx.log
    bundle = {k: v for k, v in (("CPU", config.cpus_per_trial), ("GPU", config.gpus)) if v > 0}
    trainable = tune.with_resources(
        tune.with_parameters(trial, data=data), tune.PlacementGroupFactory([bundle] * (1 + slots))
    )
    path = f"{storage.rstrip('/')}/{name}"  # a folder, or a URI such as s3://bucket/ray
    if ctx.resume and tune.Tuner.can_restore(path):
        log(f"restoring the interrupted {what}")
        tuner = tune.Tuner.restore(
            path, trainable=trainable, param_space=param_space, resume_errored=True
        )
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
                name=name,
                storage_path=storage,
                callbacks=[logger],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
            ),
        )
    return tuner.fit()


def run_phase(phase: Phase, ctx: SearchContext) -> tuple[PhaseResult, Any]:
    """Run (or restore) one Tune experiment; returns its summary and its ResultGrid."""
    config, storage, log = ctx.config, ctx.storage, ctx.log
    kind = phase.kind
    searched = kind.name
    param_space = {**phase.fixed.to_dict(), searched: tune.choice(list(phase.grid))}
    name = f"{searched}-ipc{phase.ipc}"
    logger = TrialLogger(ctx.tracker, phase=searched, ipc=phase.ipc, searched=searched, log=log)
    full = len(kind.grid(config))
    kept = " and the anchors " + ", ".join(f"{a:g}" for a in phase.anchors) if phase.anchors else ""
    bounded = (
        f" (≤ {phase.bound:g}, the previous IPC's best{kept}: {len(phase.grid)} of {full})"
        if len(phase.grid) < full and phase.bound is not None
        else ""
    )
    shown = kind.shown
    log(
        f"IPC {phase.ipc}: searching {shown} over {len(phase.grid)} grid values{bounded}, "
        f"{config.max_concurrent} trial(s) at a time"
    )
    marker = ctx.markers / f"{name}.finished"

    def concave_search() -> dict[str, Any]:
        marker.unlink(missing_ok=True)
        return {
            "search_alg": ConcaveSearch(
                _sampler(phase, config),
                metric=METRIC,
                mode="max",
                marker=str(marker),
                parallel=config.max_concurrent,
            ),
            "num_samples": _cap(phase),  # the search finishes itself before this
        }

    started = time.perf_counter()
    grid = _fit_experiment(
        kind.trial,
        param_space,
        name,
        logger,
        ctx,
        what=f"{searched} search at IPC {phase.ipc}",
        search=concave_search,
        slots=phase.fixed.stage_parallel,
    )
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
    log(
        f"IPC {phase.ipc}: best {shown} = {summary.best:g} "
        f"({summary.trials} trials for {len(phase.grid)} grid values, "
        f"{summary.failed} failed)"
    )
    return summary, grid


def run_baseline(
    name: str,
    phase: str,
    trial: Callable[..., None],
    fixed: TrialSpec,
    repeats: int,
    ctx: SearchContext,
) -> tuple[Baseline, Any]:
    """A fixed candidate of a phase (the random subset, plain MTT), evaluated ``repeats``
    times (seeds offset by the repeat, as a grid point's repeats are) in a Tune experiment of
    its own: logged to MLflow like every trial, restored on resume."""
    param_space = {**fixed.to_dict(), "repeat": tune.grid_search(list(range(repeats)))}
    path = f"{ctx.storage.rstrip('/')}/{name}"
    logger = TrialLogger(ctx.tracker, phase=phase, ipc=fixed.ipc, searched="init", log=ctx.log)
    started = time.perf_counter()
    grid = _fit_experiment(trial, param_space, name, logger, ctx, what=f"{name} experiment")
    results = [grid[i] for i in range(len(grid))]
    scored = [r for r in results if r.error is None and r.metrics and METRIC in r.metrics]
    if len(results) < repeats or any(r.error is None and r not in scored for r in results):
        raise SearchInterrupted(
            f"the {name} experiment was interrupted; its state is saved in {path}"
        )
    if not scored:
        raise SelmatchError(f"every trial of {name} failed{first_error(results)}")
    metrics = [r.metrics for r in scored if r.metrics is not None]
    vals = [m["val_accuracy"] for m in metrics]
    return Baseline(
        noise=measured_noise([vals]) if len(vals) > 1 else None,
        val=sum(m["val_accuracy"] for m in metrics) / len(metrics),
        test=sum(m["test_accuracy"] for m in metrics) / len(metrics),
        n=len(metrics),
        failed=len(results) - len(metrics),
        work_seconds=max(m.get("work_seconds", 0.0) for m in metrics),
        cost=_cost(started, grid, ctx.config),
    ), grid
