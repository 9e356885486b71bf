"""The full-budget evaluations of an IPC: its winner, the top β windows (the short-vs-full rank
correlation) and the random reference, as Ray tasks queued as soon as what they evaluate is
known (:class:`EarlyFinal`), started in the slots the search leaves
(:class:`~selmatch_tune.flow.slots.FinalSlots`) and awaited in :func:`finish_ipc`. A window or the
random subset is trained by the β trial's own body (``evaluate_selection``) with the full
budget."""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from selmatch.core.config import SelmatchError
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.selection.initial import RandomInit, WindowInit
from selmatch_tune.flow.phases import METRIC, Log
from selmatch_tune.flow.slots import Final, FinalSlots
from selmatch_tune.flow.trials import TrialData, TrialSpec
from selmatch_tune.results.record import (
    Candidate,
    Finalist,
    FinalResult,
    FullPoint,
    IpcRecord,
    PhaseResult,
    Reference,
    SearchRecord,
    StageCost,
    Winner,
)
from selmatch_tune.results.tracking import Tracker
from selmatch_tune.settings.config import SearchConfig
from selmatch_tune.settings.phase_kinds import PHASES


def _final_task(
    data: TrialData, fixed: TrialSpec, payload: dict[str, Any], evaluation: dict[str, Any]
) -> dict[str, Any]:
    """Ray task body: full-length evaluation of a window (β point), of a random class-balanced
    subset (the reference) or of a saved set."""
    import numpy as np
    import torch

    from selmatch.distillation.methods import saved_set_augment
    from selmatch.evaluation.evaluate import evaluate_set
    from selmatch_tune.flow.trials import evaluate_selection, fetch_data, set_threads

    set_threads(fixed)
    dataset, hardness, split = fetch_data(fixed, data)
    config = EvalConfig.from_dict(evaluation)
    if payload["kind"] in (WindowInit.kind, RandomInit.kind):
        # as a β trial trains it, with the full budget
        selection = fixed.replace(init=payload["kind"], beta=payload.get("beta"))
        return evaluate_selection(selection, dataset, hardness, split, config).to_dict()
    images = torch.from_numpy(np.array(payload["images"]))
    mask = torch.from_numpy(np.array(payload["mask"]))
    labels = torch.from_numpy(np.array(payload["labels"]))
    # a set with a distilled part is trained with combined augmentation, as in the α trials
    augment = saved_set_augment(mask, config.train.augment)
    config = config.replace(train=config.train.replace(augment=augment))
    return evaluate_set(images, labels, dataset, config, split=split, dsa_mask=mask).to_dict()


def collect_winner(grid: Any, value: float, target: Path, searched: str = "alpha") -> Path:
    """Copy the distilled set of the best trial at ``searched`` = ``value`` (its checkpoint)
    into ``target``."""
    from selmatch.distillation.distill import draw

    candidates = [
        r
        for r in grid
        if r.error is None
        and r.metrics
        and METRIC in r.metrics
        and r.checkpoint
        and abs(float(r.config[searched]) - value) < 1e-12
    ]
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
    """Full-budget evaluations queued as soon as what they evaluate is known, so that they
    fill the trial slots the search leaves and run beside the next phases and IPCs: the
    random reference at the start of an IPC, the top β windows after its β phase. Only the
    winner's own evaluation waits for the α phase. The results are the same: each is the same
    Ray task with the same payload and seeds, only queued earlier."""

    reference: Final | None = None
    windows: dict[float, Final] = field(default_factory=dict)


def top_windows(config: SearchConfig, beta: PhaseResult) -> list[float]:
    """The β points evaluated with the full budget too (the short-vs-full rank correlation)."""
    curve = beta.curve
    return sorted(curve, key=lambda b: curve[b].val, reverse=True)[: config.full_eval_top]


def submit_windows(
    config: SearchConfig, beta: PhaseResult, data: TrialData, fixed: TrialSpec, slots: FinalSlots
) -> dict[float, Final]:
    return {
        b: slots.submit(data, fixed, {"kind": "window", "beta": b}, config.final.to_dict())
        for b in top_windows(config, beta)
    }


def final_evaluation(
    config: SearchConfig,
    entry: IpcRecord,
    data: TrialData,
    fixed: TrialSpec,
    slots: FinalSlots,
    early: EarlyFinal | None = None,
) -> FinalResult:
    """The winner with the full budget, and the top β points too (short vs full ranking);
    what ``early`` submitted already is awaited, not submitted again. A winner that learned
    nothing (α = 0) *is* a window or the random subset: its evaluation is that one's (the same
    images, seeds and augmentation), never computed twice. With candidates kept for it
    (``--finalists``), the winner is chosen among them here (:func:`decide_at_target`)."""
    assert entry.beta is not None
    curve = entry.beta.curve
    early = early or EarlyFinal()
    windows = early.windows or submit_windows(config, entry.beta, data, fixed, slots)
    if config.finalists and entry.candidates:
        return decide_at_target(config, entry, data, fixed, slots, early, windows)
    selected = entry.selected_as_is()
    if selected == WindowInit.kind and entry.beta.best in windows:
        winner = windows[entry.beta.best]
    elif selected == RandomInit.kind and early.reference is not None:
        winner = early.reference  # the reference is the winner: one evaluation
    elif selected == RandomInit.kind:
        winner = slots.submit(data, fixed, {"kind": "random"}, config.final.to_dict())
    else:
        assert entry.set_dir is not None
        winner = slots.submit(data, fixed, _set_payload(entry.set_dir), config.final.to_dict())
    result = winner.result()
    full = {b: final.result() for b, final in windows.items()}
    return FinalResult(
        test_mean=result["test_mean"],
        test_std=result["test_std"],
        val_mean=result["val_mean"],
        seeds=tuple(result["seeds"]),
        epochs=result["epochs"],
        beta_full={
            b: FullPoint(short_val=curve[b].val, full_val=r["val_mean"], full_test=r["test_mean"])
            for b, r in full.items()
        },
    )


def _submit_candidate(
    candidate: Candidate,
    entry: IpcRecord,
    data: TrialData,
    fixed: TrialSpec,
    slots: FinalSlots,
    evaluation: EvalConfig,
    early: EarlyFinal,
    windows: dict[float, Final],
    reuse: bool = True,
) -> Final:
    """A candidate's evaluation at the target budget: a selection as a β trial trains it, a
    set from its folder; what was queued already with the same seeds (``reuse``: the random
    reference, the top windows) is that evaluation."""
    assert entry.beta is not None
    winner = candidate.winner
    if winner.alpha == 0 and candidate.set_dir is None:
        if winner.init == RandomInit.kind:
            if early.reference is not None and reuse:
                return early.reference
            final = slots.submit(data, fixed, {"kind": "random"}, evaluation.to_dict())
            if reuse:
                early.reference = final  # the reference is this evaluation
            return final
        beta = entry.beta.best
        if beta in windows and reuse:
            return windows[beta]
        return slots.submit(data, fixed, {"kind": "window", "beta": beta}, evaluation.to_dict())
    assert candidate.set_dir is not None
    return slots.submit(data, fixed, _set_payload(candidate.set_dir), evaluation.to_dict())


def _set_payload(set_dir: str) -> dict[str, Any]:
    """A saved set as a final evaluation's payload (its arrays travel with the task)."""
    from selmatch.sets.synthetic import SyntheticSet

    saved = SyntheticSet.load(set_dir)
    return {
        "kind": "set",
        "images": saved.images.numpy(),
        "labels": saved.labels.numpy(),
        "mask": saved.distill_mask.numpy(),
    }


def tie_margin(a: Sequence[float], b: Sequence[float]) -> float:
    """Two standard errors of the mean paired difference of two finalists' per-seed scores
    (the same seeds: common random numbers); infinite below two seeds (no spread measured)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return math.inf
    return 2 * statistics.stdev(diffs) / math.sqrt(len(diffs))


def decide_at_target(
    config: SearchConfig,
    entry: IpcRecord,
    data: TrialData,
    fixed: TrialSpec,
    slots: FinalSlots,
    early: EarlyFinal,
    windows: dict[float, Final],
) -> FinalResult:
    """Every candidate kept for the IPC evaluated at the target budget (the final
    evaluation's) over the same seeds; the winner is the best on validation. When the top two
    are within :func:`tie_margin` of each other, both are evaluated again with as many new
    seeds (``top_repeats`` rounds at most) and compared on all of them; an exact tie that
    remains goes to a selection (the simpler answer). The record's winner becomes that
    candidate."""
    assert entry.beta is not None and entry.candidates
    candidates = entry.candidates
    evaluation = config.final
    finals = {
        label: _submit_candidate(c, entry, data, fixed, slots, evaluation, early, windows)
        for label, c in candidates.items()
    }
    results = {label: final.result() for label, final in finals.items()}
    per_seed = {label: [float(v) for v in r["val_accuracy"]] for label, r in results.items()}
    tests = {label: [float(v) for v in r["test_accuracy"]] for label, r in results.items()}
    seeds = {label: [int(s) for s in r["seeds"]] for label, r in results.items()}

    def ranked() -> list[str]:  # a tie keeps a selection (the simpler answer), then the label
        return sorted(
            candidates,
            key=lambda k: (-statistics.fmean(per_seed[k]), candidates[k].winner.alpha != 0, k),
        )

    repeated = False
    for round_ in range(1, config.top_repeats + 1):
        top = ranked()[:2]
        if len(top) < 2:
            break
        a, b = per_seed[top[0]], per_seed[top[1]]
        if abs(statistics.fmean(a) - statistics.fmean(b)) >= tie_margin(a, b):
            break
        repeated = True
        more = evaluation.replace(seed=evaluation.seed + round_ * evaluation.num_seeds)
        again = {
            k: _submit_candidate(
                candidates[k], entry, data, fixed, slots, more, early, windows, reuse=False
            )
            for k in top
        }
        for k, final in again.items():
            r = final.result()
            per_seed[k] += [float(v) for v in r["val_accuracy"]]
            tests[k] += [float(v) for v in r["test_accuracy"]]
            seeds[k] += [int(s) for s in r["seeds"]]
    order = ranked()
    best = order[0]
    margin = tie_margin(per_seed[order[0]], per_seed[order[1]]) if len(order) > 1 else None
    finalists = {
        k: Finalist(
            short_val=candidates[k].short.val,
            val_mean=statistics.fmean(per_seed[k]),
            test_mean=statistics.fmean(tests[k]),
            test_std=statistics.pstdev(tests[k]),
            val=tuple(per_seed[k]),
            seeds=tuple(seeds[k]),
        )
        for k in candidates
    }
    from selmatch_tune.results.outputs import spearman

    rho = spearman(
        [f.short_val for f in finalists.values()], [f.val_mean for f in finalists.values()]
    )
    entry.winner = candidates[best].winner
    won = results[best]
    curve = entry.beta.curve
    full = {b: final.result() for b, final in windows.items()}
    return FinalResult(
        test_mean=finalists[best].test_mean,
        test_std=finalists[best].test_std,
        val_mean=finalists[best].val_mean,
        seeds=tuple(seeds[best]),
        epochs=won["epochs"],
        beta_full={
            b: FullPoint(short_val=curve[b].val, full_val=r["val_mean"], full_test=r["test_mean"])
            for b, r in full.items()
        },
        finalists=finalists,
        fidelity_rank_correlation=None if rho != rho else rho,
        tie_margin=None if margin is None or math.isinf(margin) else margin,
        tie_repeated=repeated,
    )


def decision_line(config: SearchConfig, final: FinalResult, label: str) -> str:
    """The decision at the target budget in one line: the winner, the runner-up, the margin
    and how faithfully the short budget ranked the finalists."""
    assert final.finalists
    ranked = sorted(final.finalists.items(), key=lambda kv: -kv[1].val_mean)
    won = final.finalists[label]
    seeds = len(won.seeds)
    text = (
        f"at the target budget ({config.final.budget()}, {seeds} seeds, "
        f"{len(ranked)} finalists) the winner is {label}: val {100 * won.val_mean:.2f} %"
    )
    if len(ranked) > 1:
        other, second = next((k, f) for k, f in ranked if k != label)
        margin = final.tie_margin
        text += f" vs {other} {100 * second.val_mean:.2f} %" + (
            f" (tie margin {100 * margin:.2f} points"
            + (", seeds added" if final.tie_repeated else "")
            + ")"
            if margin is not None
            else ""
        )
    rho = final.fidelity_rank_correlation
    text += "; the short budget ranked them with Spearman ρ = " + (
        f"{rho:.2f}" if rho is not None else "n/a (fewer than 3)"
    )
    return text


def final_slots(config: SearchConfig) -> FinalSlots:
    """Where the search's full evaluations wait for a slot: each a Ray task with a trial's
    resources."""
    task = ray.remote(_final_task).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus)
    return FinalSlots(config, task)


def random_reference(
    config: SearchConfig, data: TrialData, fixed: TrialSpec, slots: FinalSlots
) -> Final:
    """A random class-balanced subset of the IPC, drawn from the same pool as the windows (its
    seed is the split's), trained like the winner: what the distilled set has to beat."""
    return slots.submit(data, fixed, {"kind": "random"}, config.final.to_dict())


def _reference_summary(result: dict[str, Any] | FinalResult) -> Reference:
    if isinstance(result, FinalResult):
        result = result.to_dict()
    return Reference(
        test_mean=result["test_mean"],
        test_std=result["test_std"],
        val_mean=result["val_mean"],
        seeds=tuple(result["seeds"]),
    )


def finish_ipc(
    ipc: int,
    config: SearchConfig,
    entry: IpcRecord,
    data: TrialData,
    fixed: TrialSpec,
    early: EarlyFinal,
    slots: FinalSlots,
    record: SearchRecord,
    out: Path,
    tracker: Tracker,
    log: Log,
    selection_set: Callable[[Winner, Path], Path] | None = None,
) -> None:
    """The IPC's full evaluation (its early part awaited, the winner's submitted, or the
    winner chosen among the finalists at the target budget and its set put in place), the
    random reference, the curves. The stage's cost is the time the driver waited for it here.
    ``selection_set`` writes the set of a selection that won (the random subset, the
    window)."""
    from selmatch_tune.results.outputs import save_phase_plot

    started = time.perf_counter()
    computed = entry.final is None
    if entry.final is None:
        final = final_evaluation(config, entry, data, fixed, slots, early)
        if final.finalists:
            assert entry.winner is not None and entry.candidates and entry.beta is not None
            label = entry.winner.label(entry.beta.best)
            chosen = entry.candidates[label]
            folder = out / "sets" / f"ipc{ipc}"
            if chosen.set_dir is not None:
                if folder.exists():
                    shutil.rmtree(folder)
                shutil.copytree(chosen.set_dir, folder)
            else:
                assert selection_set is not None, "a selection won: its set is written here"
                selection_set(entry.winner, folder)
            entry.set_dir = str(folder)
            log(f"IPC {ipc}: " + decision_line(config, final, label))
        entry.final = final
    if config.random_reference and entry.final.random is None:
        if entry.selected_as_is() == RandomInit.kind:  # the winner is the reference itself
            entry.final.random = _reference_summary(entry.final)
        else:
            if not computed:  # a search finished before the reference existed
                log(
                    f"IPC {ipc}: final evaluation of a random subset of the same size "
                    "(the reference)"
                )
            reference = early.reference or random_reference(config, data, fixed, slots)
            entry.final.random = _reference_summary(reference.result())
            computed = True
    if computed:
        entry.final.cost = StageCost(time.perf_counter() - started).plus(entry.final.cost)
    record.save(out)
    title = f"{config.short.model.describe()}, {config.short.budget()}"
    for name, kind in PHASES.items():
        summary = entry.phase(name)
        if summary is None:
            continue
        path = save_phase_plot(
            out / f"{name}-ipc{ipc}.png",
            summary,
            name=name,
            ipc=ipc,
            title=title,
            xlabel=kind.axis(config.beta_convention),
        )
        tracker.log_artifact(path, "curves")
    assert entry.set_dir is not None
    tracker.log_artifact(Path(entry.set_dir) / "grid.png", f"sets/ipc{ipc}")
