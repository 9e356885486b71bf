"""The Ray side of a search: attach to a cluster (as ``ray.init()`` finds one) or start a local
one, give trials the cluster's GPUs by default, check that it has a trial's resources (asking
an autoscaler first), and where the Tune experiments live."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray

from selmatch.core.config import ConfigError
from selmatch_tune.results.record import Log, SearchRecord
from selmatch_tune.settings.config import AUTO, SearchConfig


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
    worth and the check repeats for up to ``wait`` seconds. ``--gpus-per-trial auto`` is
    resolved against the cluster first."""
    config = resolve_gpus(config)
    wanted = {"CPU": config.cpus_per_trial, "GPU": config.gpus}
    missing = _missing(wanted)
    if missing and wait > 0:
        from ray.autoscaler.sdk import request_resources

        bundle = {k: v for k, v in wanted.items() if v > 0}
        request_resources(bundles=[bundle] * config.max_concurrent)
        log(
            f"the cluster has {missing}; asked the autoscaler for {config.max_concurrent} x "
            f"{bundle}, waiting up to {wait:g} s"
        )
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
                f"--gpus-per-trial {config.gpus:g} asks for GPUs, but the Ray cluster "
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
    return {"cpu": config.cpus_per_trial, "gpu": config.gpus}


def _missing(wanted: dict[str, float]) -> dict[str, float]:
    """The kinds of resource the cluster has less of than one trial wants (and how much)."""
    available = ray.cluster_resources()
    return {
        k: available.get(k, 0.0) for k, v in wanted.items() if v > 0 and available.get(k, 0.0) < v
    }


#: ``--address local``: always a new local Ray, never a running cluster
LOCAL = "local"


@dataclass(frozen=True)
class Found:
    """The Ray a search uses: ``address`` to attach to (``None``: start a local instance) and
    where that choice came from, for the first lines of the search."""

    address: str | None
    source: str


def find_cluster(address: str | None) -> Found:
    """Ray's own order (``ray.init()``): ``--address``, else ``RAY_ADDRESS``, else the cluster
    the last ``ray start`` on this node recorded (Ray's temp dir, ``ray_current_cluster``)
    when it still answers; else a new local instance. ``local`` always means a new one."""
    if address:
        return Found(None if address == LOCAL else address, "--address")
    from_env = os.environ.get("RAY_ADDRESS")
    if from_env:
        return Found(None if from_env == LOCAL else from_env, "RAY_ADDRESS")
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    recorded = path.read_text().strip() if path.is_file() else ""
    if recorded and _answers(recorded):
        return Found(recorded, f"the cluster `ray start` runs on this node ({path})")
    stale = f" ({path} names {recorded}, which does not answer)" if recorded else ""
    return Found(None, f"no Ray cluster on this node{stale}")


def _answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at ``host:port`` (a cluster's GCS)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def connect(address: str | None, log: Log) -> None:
    """Attach to the cluster :func:`find_cluster` finds, else start a new local Ray on
    loopback (selmatch_tune.cluster.network); say which."""
    from selmatch_tune.cluster.network import start_local_ray

    if ray.is_initialized():
        log(f"using the Ray this process has already ({describe_cluster()})")
        return
    found = find_cluster(address)
    if found.address:
        ray.init(address=found.address, log_to_driver=False)
        log(
            f"attached to the Ray cluster at {ray.get_runtime_context().gcs_address} (from "
            f"{found.source}): {describe_cluster()}"
        )
    else:
        local = start_local_ray(log_to_driver=False)
        why = "--address local" if found.source == "--address" else found.source
        log(f"started a local Ray instance ({why}): {describe_cluster()}; {local.describe()}")


def describe_cluster() -> str:
    """``3 nodes, 24 CPUs, 8 GPUs``: the alive nodes and their resources."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    total = ray.cluster_resources()
    return (
        f"{nodes} node{'s' if nodes != 1 else ''}, {total.get('CPU', 0):g} CPUs, "
        f"{total.get('GPU', 0):g} GPUs"
    )


def resolve_gpus(config: SearchConfig) -> SearchConfig:
    """``--gpus-per-trial auto``: one GPU per trial (and per precompute task and final
    evaluation) where the cluster has GPUs now, none where it has none."""
    if config.gpus_per_trial != AUTO:
        return config
    return config.replace(gpus_per_trial=1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)


def trial_slots(config: SearchConfig) -> int:
    """How many trials the cluster can run at once now (its CPUs and GPUs over a trial's)."""
    total = ray.cluster_resources()
    wanted = {"CPU": config.cpus_per_trial, "GPU": config.gpus}
    return int(min(total.get(k, 0.0) / v for k, v in wanted.items() if v > 0))


def describe_trials(config: SearchConfig) -> str:
    """``8 trials at once (4 CPUs, 1 GPU each)``, with why when fewer than --max-concurrent."""
    slots = trial_slots(config)
    at_once = min(config.max_concurrent, slots)
    limit = (
        f" (the cluster has room for {slots}; --max-concurrent {config.max_concurrent})"
        if slots < config.max_concurrent
        else ""
    )
    return (
        f"{at_once} trial(s) at once, {config.cpus_per_trial:g} CPU and "
        f"{config.gpus:g} GPU each{limit}"
    )


def experiments_root(record: SearchRecord, out: Path, storage: str | None) -> str:
    """Where this search's Tune experiments live: ``OUT/ray``, or a folder of its own under a
    shared ``--storage`` (searches sharing one must never restore or delete each other's)."""
    if not storage:
        return str(out / "ray")
    if record.storage_id is None:  # new searches get an id; older records kept the bare path
        record.storage_id = "" if record.ipcs else f"{out.name}-{uuid.uuid4().hex[:8]}"
    root = storage.rstrip("/")
    return f"{root}/{record.storage_id}" if record.storage_id else root
