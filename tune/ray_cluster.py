"""The Ray side of a search: attach to a cluster or start a local one, check that it has a
trial's resources (asking an autoscaler first), and where the Tune experiments live."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import optuna
import ray

from selmatch.config import ConfigError
from selmatch_tune.config import SearchConfig
from selmatch_tune.phases import Log
from selmatch_tune.record import SearchRecord


def quiet_tune() -> None:
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
            f"--stage-parallel must be ≤ {most}: each SeqMatch trial reserves its own "
            f"resources and {slots} more slots of them, and the cluster has {missing}; got "
            f"{slots}"
        )
    return {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}


def _missing(wanted: dict[str, float]) -> dict[str, float]:
    """The kinds of resource the cluster has less of than one trial wants (and how much)."""
    available = ray.cluster_resources()
    return {k: available.get(k, 0.0) for k, v in wanted.items()
            if v > 0 and available.get(k, 0.0) < v}  # fmt: skip


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


def experiments_root(record: SearchRecord, out: Path, storage: str | None) -> str:
    """Where this search's Tune experiments live: ``OUT/ray``, or a folder of its own under a
    shared ``--storage`` (searches sharing one must never restore or delete each other's)."""
    if not storage:
        return str(out / "ray")
    if record.storage_id is None:  # new searches get an id; older records kept the bare path
        record.storage_id = "" if record.ipcs else f"{out.name}-{uuid.uuid4().hex[:8]}"
    root = storage.rstrip("/")
    return f"{root}/{record.storage_id}" if record.storage_id else root
