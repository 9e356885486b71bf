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
``OUT/search_state.json`` (a :class:`~selmatch_tune.results.record.SearchRecord`); with
``resume=True`` finished stages are skipped and an interrupted Tune experiment is restored
(``Tuner.restore``) rather than started again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from selmatch.cli.common import check_output
from selmatch.data import ImageDataset, holdout_split, load_dataset
from selmatch.data.identity import check_data, data_identity
from selmatch_tune.cluster.ray_cluster import (
    check_resources,
    connect,
    describe_trials,
    experiments_root,
    quiet_tune,
    resolve_gpus,
)
from selmatch_tune.cluster.storage import check_storage
from selmatch_tune.flow.finals import final_slots
from selmatch_tune.flow.ipc_search import IpcSearch, beta_winner, fixed_settings
from selmatch_tune.flow.phases import Log, SearchContext, SearchInterrupted, monotone_bound
from selmatch_tune.flow.precompute import Precomputed, precompute
from selmatch_tune.flow.slots import FinalSlots
from selmatch_tune.flow.trials import TrialData
from selmatch_tune.results.costs import format_costs, stage_costs
from selmatch_tune.results.record import STATE, IpcRecord, SearchRecord, StageCost, open_record
from selmatch_tune.results.tracking import Tracker
from selmatch_tune.settings.config import SearchConfig, fit_to_data, validation_warning
from selmatch_tune.settings.phase_kinds import PHASES

__all__ = [
    "SearchInterrupted",
    "beta_winner",
    "check_resources",
    "fixed_settings",
    "prepare",
    "run_search",
]


def precompute_all(config: SearchConfig, dataset: ImageDataset, out: Path, log: Log) -> Precomputed:
    started = time.perf_counter()
    pre = precompute(
        dataset,
        config.experts,
        score=config.score,
        cache_root=out.parent / "cache",
        consistency=config.consistency,
        image_size=config.image_size,
        score_table=Path(config.score_table) if config.score_table else None,
        gpus_per_expert=config.gpus,
        cpus_per_expert=config.cpus_per_trial,
        device=config.short.device,
        epochs=matched_epochs(config),
        log=log,
    )
    networks = ""
    if pre.consistency_trained or pre.consistency_reused:  # a score estimated beside them
        networks = (
            f"; consistency networks: {pre.consistency_trained} trained, "
            f"{pre.consistency_reused} reused, in {pre.score_dir}"
        )
    log(
        f"precomputed in {time.perf_counter() - started:.0f} s (experts: {pre.trained} trained, "
        f"{pre.reused} reused{networks})"
    )
    return pre


def matched_epochs(config: SearchConfig) -> tuple[int, int]:
    """The first and last expert epoch an α or K trial can match, [T−, T+ + M]: segments
    start in [T−, T+) and end M epochs later (SeqMatch's segments lie in that range, at most
    T+ when it holds fewer epochs than K; its retrained stages match experts of their own,
    trained in the trial), over the matching settings a phase may try (the T+ grid)."""
    distills = [config.distill]
    for kind in PHASES.values():  # a phase that varies a matching setting (T+) widens it
        group, _, name = (kind.sets or "").partition(".")
        if group == "distill":
            distills += [config.distill.replace(**{name: kind.cast(v)}) for v in kind.grid(config)]
    return (
        min(d.min_start_epoch for d in distills),
        max(d.max_start_epoch + d.expert_epochs for d in distills),
    )


def trial_data(pre: Precomputed) -> TrialData:
    return TrialData(
        dataset=pre.dataset_ref,
        hardness=pre.hardness_ref,
        pool=ray.put(pre.split.pool.numpy()),
        val=ray.put(pre.split.val.numpy()),
        trajectories=tuple(pre.trajectory_refs),
        first_epoch=pre.first_epoch,
    )


def prepare(
    config: SearchConfig,
    out: Path,
    *,
    resume: bool,
    data_root: str | None,
    skip_bad_images: bool = False,
    log: Log = print,
) -> tuple[SearchConfig, ImageDataset, SearchRecord]:
    """What a search checks before it starts anything: the data loads (``skip_bad_images``:
    leaving out, and counting, the image files that cannot be decoded), the settings are
    fitted to it (``fit_to_data``), and ``out`` holds no search or (``resume``) this one.
    Nothing is written."""
    check_output(out, "folder", writes="search")
    dataset = load_dataset(
        config.dataset,
        data_root=data_root,
        image_size=config.image_size,
        skip_bad_images=skip_bad_images,
    )
    log(dataset.describe())
    skipped = dataset.skipped_summary()
    if skipped:
        log(f"WARNING: {skipped}")
    # fitting changes no setting of the split: the experts' one holds for the fitted config
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=config.experts.val_fraction,
        seed=config.experts.split_seed,
    )
    config, changes = fit_to_data(config, dataset.train_labels, dataset.num_classes, split)
    for change in changes:
        log(f"fitted to {config.dataset}: {change}")
    warning = validation_warning(config, len(split.val))
    if warning:
        log(warning)
    record = open_record(out, config, resume, log=log)
    if record.started:  # --resume: the same data as the search's first run
        check_data(record.data, dataset, f"--resume: the search in {out} was")
    record.data = data_identity(dataset)
    return config, dataset, record


def run_search(
    config: SearchConfig,
    out: Path,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    address: str | None = None,
    data_root: str | None = None,
    storage: str | None = None,
    wait_for_resources: float = 0.0,
    skip_bad_images: bool = False,
    log: Log = print,
) -> list[dict[str, Any]]:
    """The whole search; returns the per-IPC rows of ``best_hparams.csv``."""
    out = out.resolve()
    config, dataset, record = prepare(
        config, out, resume=resume, data_root=data_root, skip_bad_images=skip_bad_images, log=log
    )
    out.mkdir(parents=True, exist_ok=True)
    config = start_ray(config, address, wait_for_resources, log)
    tracker = open_tracker(config, out, record, tracking_uri)
    started = time.perf_counter()
    slots: FinalSlots | None = None
    try:
        pre = precompute_all(config, dataset, out, log)
        record.precompute = StageCost(time.perf_counter() - started).plus(record.precompute)
        ctx = begin(config, pre, out, record, tracker, storage, resume, log)
        slots = final_slots(config)  # the full evaluations, in slots the search leaves
        search_ipcs(ctx, pre, record, slots)
    except BaseException:
        tracker.finish(failed=True)
        raise
    finally:
        release(slots, wait_for_resources)
    record.seconds = (record.seconds or 0.0) + time.perf_counter() - started
    return report(config, record, out, tracker, ctx.storage, log)


def start_ray(config: SearchConfig, address: str | None, wait: float, log: Log) -> SearchConfig:
    """Attach to (or start) Ray, give ``--gpus-per-trial auto`` its value, check the cluster
    can hold a trial (waiting up to ``wait`` seconds for an autoscaler); the config with its
    GPUs resolved."""
    quiet_tune()
    connect(address, log)
    config = resolve_gpus(config)
    check_resources(config, wait=wait, log=log)
    log(
        f"{describe_trials(config)}; precompute tasks and final evaluations get a trial's resources"
    )
    return config


def open_tracker(
    config: SearchConfig, out: Path, record: SearchRecord, tracking_uri: str | None
) -> Tracker:
    """The MLflow tracker with the search's parent run (resumed when the record has one)."""
    from selmatch_tune.results.tracking import default_tracking_uri

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
    return tracker


def begin(
    config: SearchConfig,
    pre: Precomputed,
    out: Path,
    record: SearchRecord,
    tracker: Tracker,
    storage: str | None,
    resume: bool,
    log: Log,
) -> SearchContext:
    """After the precompute: the folder holds a search from here on; where the Tune
    experiments go (checked writable from every node); what the phases share."""
    record.score_dir = str(pre.score_dir)  # where the ranking came from (a study reads it)
    record.started = True
    storage_path = experiments_root(record, out, storage)
    check_storage(storage_path, log=log)  # every node writes its trials' sets there
    record.save(out)  # the experiments' folder must be found again on --resume
    return SearchContext(config, trial_data(pre), storage_path, tracker, out, resume, log)


def search_ipcs(
    ctx: SearchContext, pre: Precomputed, record: SearchRecord, slots: FinalSlots
) -> None:
    """Each IPC in increasing order, bounded by the previous one's bests (the monotone rule);
    its final evaluation right after it, or (``final_beside_search``) all of them at the
    end, having run beside the search."""
    config = ctx.config
    previous: IpcRecord | None = None
    finishers: list[Callable[[], None]] = []
    for ipc in config.ipcs:
        bounds: tuple[float | None, float | None] = (None, None)
        if config.monotone and previous is not None and previous.beta is not None:
            measured = previous.measured_noise()
            beta, why_beta = monotone_bound(previous.beta, config.noise, measured)
            alpha, why_alpha = monotone_bound(previous.alpha, config.noise, measured)
            bounds = (beta, alpha)
            ctx.log(f"IPC {ipc}: β: {why_beta}" + (f"; α: {why_alpha}" if why_alpha else ""))
        finish = IpcSearch(ctx, pre, record, slots, ipc, bounds).run()
        if config.final_beside_search:
            finishers.append(finish)
        else:
            finish()
        previous = record.ipcs[ipc]
    for finish in finishers:  # the full evaluations, begun beside the search
        finish()


def release(slots: FinalSlots | None, wait_for_resources: float) -> None:
    """The final-evaluation slots closed; the autoscaler's request withdrawn."""
    if slots is not None:
        slots.close()
    if wait_for_resources > 0:  # let the autoscaler remove idle workers again
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


def report(
    config: SearchConfig, record: SearchRecord, out: Path, tracker: Tracker, storage: str, log: Log
) -> list[dict[str, Any]]:
    """The outputs of a finished search: the table, the costs, the rank correlations, the
    parent run's artifacts and metrics, and the lines that say where everything went."""
    from selmatch_tune.results.outputs import (
        below_random,
        format_table,
        mean_rank_correlation,
        predict,
        rank_correlations,
        table_rows,
        write_table,
    )

    rows = table_rows(config.dataset, config.beta_convention, record)
    table = write_table(out / "best_hparams.csv", rows)
    by_ipc = rank_correlations(record)
    record.rank_correlation_by_ipc = by_ipc
    record.rank_correlation_short_vs_full = mean_rank_correlation(by_ipc)
    record.save(out)
    cost_table = format_costs(stage_costs(record))
    costs = out / "costs.md"
    costs.write_text(f"# What this search cost, by stage\n\n{cost_table}\n")
    for path in (table, out / STATE, costs):
        tracker.log_artifact(path)
    tracker.log_parent_metrics(
        {
            **{f"final_test_ipc{r['ipc']}": r["final_test_mean"] for r in rows},
            **{
                f"random_test_ipc{r['ipc']}": r["random_test_mean"]
                for r in rows
                if r["random_test_mean"] != ""
            },
            **{f"rank_correlation_ipc{ipc}": rho for ipc, rho in by_ipc.items() if rho is not None},
            **{
                f"fidelity_rank_correlation_ipc{r['ipc']}": r["fidelity_rank_correlation"]
                for r in rows
                if r["fidelity_rank_correlation"] != ""
            },
        }
    )
    tracker.finish()
    log(format_table(rows))
    for warning in below_random(rows):
        log(warning)
    ranks = ", ".join(
        f"IPC {ipc} "
        + ("n/a (fewer than 3 points; raise --full-eval-top)" if rho is None else f"{rho:.2f}")
        for ipc, rho in by_ipc.items()
    )
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
    log(
        f"MLflow: {tracker.uri} (experiment {tracker.experiment_id}, parent run "
        f"{tracker.parent_id}); Ray results: {storage}"
    )
    for line in tracker.ui_hint():
        log(line)
    return rows
