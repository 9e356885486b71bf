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

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import ray

from selmatch.cli.common import check_output
from selmatch.data import ImageDataset, holdout_split, load_dataset
from selmatch.identity import check_data, data_identity
from selmatch_tune.config import SearchConfig, fit_to_data, validation_warning
from selmatch_tune.costs import format_costs, stage_costs
from selmatch_tune.finals import (
    EarlyFinal,
    collect_winner,
    final_slots,
    finish_ipc,
    random_reference,
    submit_windows,
)
from selmatch_tune.phase_kinds import ALPHA, BETA, SUBSETS
from selmatch_tune.phases import (
    Log,
    Phase,
    SearchInterrupted,
    bounded,
    run_baseline,
    run_phase,
)
from selmatch_tune.precompute import Precomputed, precompute
from selmatch_tune.ray_cluster import (
    check_resources,
    connect,
    describe_trials,
    experiments_root,
    quiet_tune,
    resolve_gpus,
)
from selmatch_tune.record import (
    STATE,
    IpcRecord,
    PhaseResult,
    Score,
    SearchRecord,
    StageCost,
    Winner,
    open_record,
)
from selmatch_tune.slots import FinalSlots
from selmatch_tune.storage import check_storage
from selmatch_tune.tracking import Tracker
from selmatch_tune.trials import TrialSpec

__all__ = ["SearchInterrupted", "check_resources", "prepare", "run_search"]


def precompute_all(config: SearchConfig, dataset: ImageDataset, out: Path, log: Log) -> Precomputed:
    started = time.perf_counter()
    pre = precompute(
        dataset, config.experts, score=config.score, cache_root=out.parent / "cache",
        consistency=config.consistency, image_size=config.image_size,
        score_table=Path(config.score_table) if config.score_table else None,
        gpus_per_expert=config.gpus, cpus_per_expert=config.cpus_per_trial,
        device=config.short.device,
        epochs=matched_epochs(config), log=log,
    )  # fmt: skip
    networks = ""
    if config.score == "consistency":
        networks = (f"; consistency networks: {pre.consistency_trained} trained, "
                    f"{pre.consistency_reused} reused, in {pre.score_dir}")  # fmt: skip
    log(f"precomputed in {time.perf_counter() - started:.0f} s (experts: {pre.trained} trained, "
        f"{pre.reused} reused{networks})")  # fmt: skip
    return pre


def matched_epochs(config: SearchConfig) -> tuple[int, int]:
    """The first and last expert epoch an α or K trial can match, [T−, T+ + M]: segments
    start in [T−, T+) and end M epochs later (SeqMatch's segments lie in that range, at most
    T+ when it holds fewer epochs than K; its retrained stages match experts of their own,
    trained in the trial)."""
    distill = config.distill
    return distill.min_start_epoch, distill.max_start_epoch + distill.expert_epochs


def trial_data(pre: Precomputed) -> dict[str, Any]:
    return {
        "dataset": pre.dataset_ref,
        "hardness": pre.hardness_ref,
        "pool": ray.put(pre.split.pool.numpy()),
        "val": ray.put(pre.split.val.numpy()),
        "trajectories": pre.trajectory_refs,
        "first_epoch": pre.first_epoch,
    }


def fixed_settings(config: SearchConfig, pre: Precomputed, ipc: int) -> TrialSpec:
    """What every trial of an IPC shares; each phase replaces what is its own."""
    return TrialSpec(
        ipc=ipc, beta_convention=config.beta_convention, score=config.score,
        val_fraction=pre.split.val_fraction, split_seed=pre.split.seed,
        cpus_per_trial=config.cpus_per_trial, gpus_per_trial=config.gpus,
        evaluation=config.short,
    )  # fmt: skip


def search_ipc(
    ipc: int, config: SearchConfig, pre: Precomputed, data: dict[str, Any],
    record: SearchRecord, out: Path, storage: str, tracker: Tracker, slots: FinalSlots, *,
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
        early.reference = random_reference(config, data, fixed, slots)
    if entry.beta is None:
        phase = Phase(BETA.name, ipc, bounded(BETA.grid(config), bounds[0]), fixed, (), bounds[0])
        entry.beta, _ = run_phase(phase, config, data, storage, tracker, markers=markers,
                                  resume=resume, log=log)  # fmt: skip
        record.save(out)
    beta = entry.beta
    if beside and entry.final is None:
        early.windows = submit_windows(config, beta, data, fixed, slots)
    # a search begun before the random candidate existed keeps the α phase it has
    if entry.alpha is None and beta.random is None:
        repeats = 1 + config.top_repeats  # as many as a close top gets
        log(f"IPC {ipc}: the random class-balanced subset as a β-phase candidate "
            f"({repeats} evaluation(s), the windows' budget)")  # fmt: skip
        beta.random, _ = run_baseline(
            f"beta-random-ipc{ipc}", BETA.name, BETA.trial, fixed.replace(init="random"), repeats,
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
    return partial(
        finish_ipc, ipc, config, entry, data, fixed, early, slots, record, out, tracker, log
    )


def beta_winner(beta: PhaseResult) -> str:
    """``"random"`` when the random subset beats the best window on validation, else
    ``"window"`` (a tie keeps the window: the method's own initialisation)."""
    assert beta.random is not None
    return "random" if beta.random.val > beta.best_point.val else "window"


def search_alpha(
    ipc: int, config: SearchConfig, pre: Precomputed, entry: IpcRecord,
    fixed: TrialSpec, out: Path, markers: Path, bound: float | None,
    common: dict[str, Any],
) -> None:  # fmt: skip
    """The α phase from the β phase's winner (its grid's 0 and 1 always evaluated), plain MTT
    beside it when it starts from a window, and the winner's set collected."""
    from selmatch_tune.outputs import START

    assert entry.beta is not None
    init = entry.beta.init or "window"
    alpha_fixed = _distill_fixed(config, pre, entry, fixed).replace(init=init)
    anchors = tuple(a for a in (0.0, 1.0) if a in config.alpha_grid)
    grid = tuple(sorted({*bounded(config.alpha_grid, bound), *anchors}))
    phase = Phase(ALPHA.name, ipc, grid, alpha_fixed, anchors, bound)
    alpha, results = run_phase(phase, config, common["data"], common["storage"],
                               common["tracker"], markers=markers, resume=common["resume"],
                               log=common["log"])  # fmt: skip
    entry.alpha = alpha
    alpha.init = init
    winner = Winner(init=init, alpha=alpha.best, candidate="alpha")
    if init == "window" and config.mtt_candidate:
        common["log"](f"IPC {ipc}: plain MTT (the random subset, α = 1) as an α-phase candidate")
        alpha.mtt, mtt_results = run_baseline(
            f"alpha-mtt-ipc{ipc}", ALPHA.name, ALPHA.trial,
            alpha_fixed.replace(init="random", alpha=1.0), 1, **common,
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
    config: SearchConfig, pre: Precomputed, entry: IpcRecord, fixed: TrialSpec
) -> TrialSpec:
    """What every distillation trial of an IPC shares: the β phase's best β, the matching
    settings, the experts' and where the precompute cached them (the set's provenance)."""
    assert entry.beta is not None
    return fixed.replace(
        beta=entry.beta.best, distill=config.distill, experts=config.experts,
        layout=pre.layout.to_dict(), experts_dir=str(pre.cache_dir),
    )  # fmt: skip


def search_subsets(
    ipc: int, config: SearchConfig, pre: Precomputed, entry: IpcRecord,
    fixed: TrialSpec, out: Path, markers: Path, common: dict[str, Any],
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
    # SeqMatch's learnable lr starts at its own default (MTT's 0.01) unless --override
    # distill.lr_init set one; from the random subset, every image learned
    seq_fixed = _distill_fixed(config, pre, entry, fixed).replace(
        method="seqmatch", init="random", alpha=1.0, seqmatch_experts=config.seqmatch_experts,
        stage_parallel=config.stage_slots,
    )  # fmt: skip
    phase = Phase(SUBSETS.name, ipc, grid, seq_fixed)
    subsets, results = run_phase(phase, config, common["data"], common["storage"],
                                 common["tracker"], markers=markers, resume=common["resume"],
                                 log=log)  # fmt: skip
    entry.subsets = subsets
    subsets.seqmatch_experts = config.seqmatch_experts
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
        f"({config.seqmatch_experts} stage experts)")  # fmt: skip
    target = out / "sets" / f"ipc{ipc}"
    entry.set_dir = str(collect_winner(results, best, target, searched=SUBSETS.name))


def prepare(
    config: SearchConfig, out: Path, *, resume: bool, data_root: str | None,
    skip_bad_images: bool = False, log: Log = print,
) -> tuple[SearchConfig, ImageDataset, SearchRecord]:  # fmt: skip
    """What a search checks before it starts anything: the data loads (``skip_bad_images``:
    leaving out, and counting, the image files that cannot be decoded), the settings are
    fitted to it (``fit_to_data``), and ``out`` holds no search or (``resume``) this one.
    Nothing is written."""
    check_output(out, "folder", writes="search")
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
    record = open_record(out, config, resume, log=log)
    if record.has_started:  # --resume: the same data as the search's first run
        check_data(record.data, dataset, f"--resume: the search in {out} was")
    record.data = data_identity(dataset)
    return config, dataset, record


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
    quiet_tune()
    connect(address, log)
    config = resolve_gpus(config)
    check_resources(config, wait=wait_for_resources, log=log)
    log(
        f"{describe_trials(config)}; precompute tasks and final evaluations get a trial's resources"
    )
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
    slots: FinalSlots | None = None
    try:
        pre = precompute_all(config, dataset, out, log)
        record.precompute = StageCost(time.perf_counter() - started).plus(record.precompute)
        record.score_dir = str(pre.score_dir)  # where the ranking came from (a study reads it)
        record.started = True  # from here on, the folder holds a search
        data = trial_data(pre)
        storage_path = experiments_root(record, out, storage)
        check_storage(storage_path, log=log)  # every node writes its trials' sets there
        record.save(out)  # the experiments' folder must be found again on --resume
        slots = final_slots(config)  # the full evaluations, in slots the search leaves
        previous: IpcRecord | None = None
        finishers: list[Callable[[], None]] = []
        for ipc in config.ipcs:
            bounds: tuple[float | None, float | None] = (None, None)
            if config.monotone and previous is not None and previous.beta is not None:
                bounds = (previous.beta.best, previous.alpha.best if previous.alpha else None)
            finish = search_ipc(
                ipc,
                config,
                pre,
                data,
                record,
                out,
                storage_path,
                tracker,
                slots,
                bounds=bounds,
                resume=resume,
                log=log,
            )
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
        if slots is not None:
            slots.close()
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
