"""Precompute once: expert trajectories and difficulty scores, trained by Ray tasks and owned
by the driver in Ray's object store.

Each expert is one Ray task (a GPU each where the cluster has GPUs), and so is each network of
the consistency score (:mod:`selmatch.selection.consistency`) when the search ranks by it: all of
them are submitted at once and run side by side. A task *returns* numpy arrays, so the driver owns
them (an object ``ray.put`` inside a worker would die with it); the driver also writes them to
cache folders keyed by everything that shapes them (dataset, model and its parameter layout,
settings): the experts in :mod:`selmatch.training.experts`' format, the consistency networks in
:mod:`selmatch.selection.consistency`'s, each file as soon as its task returns. A later search with
the same settings reuses them (an interrupted one trains only what is missing). Trials receive
object references (through ``tune.with_parameters``) and never recompute or reload anything
from disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from safetensors.torch import save_file

from selmatch.core.config import SelmatchError
from selmatch.core.io import atomic_write, write_json
from selmatch.core.migrate import EXPERTS_MANIFEST
from selmatch.data import HoldoutSplit, ImageDataset, holdout_split
from selmatch.data.identity import data_digest, data_identity, known_digest
from selmatch.selection import consistency as consistency_score
from selmatch.selection.consistency import ConsistencyConfig
from selmatch.training.experts import (
    ExpertConfig,
    ExpertSet,
    expert_file,
    expert_training_indices,
    train_one_expert,
    write_expert_scores,
)
from selmatch.training.models import build_model
from selmatch.training.params import ParamLayout
from selmatch_tune.cluster.devices import prepare_worker


def cache_key(
    config: ExpertConfig | ConsistencyConfig,
    image_size: int | None = None,
    layout: ParamLayout | None = None,
    data: str | None = None,
) -> str:
    """A folder name that changes whenever anything that shapes the cached networks changes:
    their settings (for experts, all but their number: more may be added), the images' size
    when the dataset is resized, the network's parameter layout (so a change of the
    architecture never reuses networks of the old one) and the data's digest
    (:func:`selmatch.data.identity.data_digest`: another copy of a dataset of the same name, an
    image folder that grew, never reuses networks trained on the old one)."""
    identity = config.identity() if isinstance(config, ExpertConfig) else config.to_dict()
    if data is not None:
        identity = {**identity, "data": data}
    if image_size is not None:
        identity = {**identity, "image_size": image_size}
    if layout is not None:
        identity = {**identity, "layout": layout.to_dict()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    prefix = "consistency-" if isinstance(config, ConsistencyConfig) else ""
    return f"{prefix}{config.dataset.replace(':', '_').replace('/', '_')}-{digest[:12]}"


def _layout(dataset: ImageDataset, config: ExpertConfig | ConsistencyConfig) -> ParamLayout:
    return ParamLayout.of(build_model(config.model, dataset.image_shape, dataset.num_classes))


def _train_expert_task(
    config_dict: dict[str, Any],
    index: int,
    arrays: dict[str, Any],
    threads: int,
    gpus: float = 0.0,
    device: str = "auto",
) -> dict[str, Any]:
    """Ray task body: train expert ``index`` on the driver's dataset (from the object store:
    worker nodes need no copy of the data) and return numpy arrays (driver-owned)."""
    torch_device = prepare_worker(threads, gpus, device)
    config = ExpertConfig.from_dict(config_dict)
    dataset = dataset_from_arrays(arrays)
    train_indices, _ = expert_training_indices(dataset, config)
    started = time.perf_counter()
    tensors, seconds, _ = train_one_expert(
        dataset, config, index, train_indices, device=torch_device
    )
    epochs = sorted(k for k in tensors if k.startswith("epoch_"))
    return {
        "trajectory": torch.stack([tensors[k] for k in epochs]).numpy(),
        "forgetting": tensors["forgetting"].numpy(),
        "el2n": tensors["el2n"].numpy(),
        "epoch_seconds": seconds,
        "seconds": time.perf_counter() - started,
    }


def _consistency_task(
    config_dict: dict[str, Any],
    network: int,
    arrays: dict[str, Any],
    threads: int,
    gpus: float = 0.0,
    device: str = "auto",
) -> dict[str, Any]:
    """Ray task body: train consistency network ``network`` and return its held-out samples'
    true-label probabilities as numpy arrays (driver-owned)."""
    torch_device = prepare_worker(threads, gpus, device)
    config = ConsistencyConfig.from_dict(config_dict)
    result = consistency_score.train_consistency_network(
        dataset_from_arrays(arrays), config, network, device=torch_device
    )
    return {
        "held_out": result["held_out"].numpy(),
        "probability": result["probability"].numpy(),
        "seconds": result["seconds"],
    }


@dataclass
class Precomputed:
    """Object references the trials get, and what the driver knows about them."""

    dataset_ref: ray.ObjectRef
    #: one object per expert: its snapshots from ``first_epoch`` to the last epoch matching
    #: can reach (trials fetch one expert at a time, zero-copy)
    trajectory_refs: list[ray.ObjectRef]
    hardness_ref: ray.ObjectRef
    split: HoldoutSplit
    config: ExpertConfig
    layout: ParamLayout
    cache_dir: Path
    trained: int
    reused: int
    score_dir: Path  # the folder of the score table the windows are ranked by
    consistency_trained: int = 0
    consistency_reused: int = 0
    first_epoch: int = 0


def dataset_arrays(dataset: ImageDataset) -> dict[str, Any]:
    """The dataset as plain arrays and values (what goes into the object store)."""
    return {
        "name": dataset.name,
        "train_images": dataset.train_images.numpy(),
        "train_labels": dataset.train_labels.numpy(),
        "test_images": dataset.test_images.numpy(),
        "test_labels": dataset.test_labels.numpy(),
        "class_names": list(dataset.class_names),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "source": dataset.source,
        "digest": data_digest(dataset),
    }


def dataset_from_arrays(arrays: dict[str, Any]) -> ImageDataset:
    """Rebuild the dataset inside a trial. Object-store arrays are read-only: copy once. Its
    digest is the one the precompute computed (:func:`selmatch.data.identity.known_digest`)."""
    dataset = ImageDataset(
        name=arrays["name"],
        train_images=torch.from_numpy(np.array(arrays["train_images"])),
        train_labels=torch.from_numpy(np.array(arrays["train_labels"])),
        test_images=torch.from_numpy(np.array(arrays["test_images"])),
        test_labels=torch.from_numpy(np.array(arrays["test_labels"])),
        class_names=tuple(arrays["class_names"]),
        mean=tuple(arrays["mean"]),
        std=tuple(arrays["std"]),
        source=arrays["source"],
    )
    known_digest(dataset, arrays["digest"])
    return dataset


def precompute(
    dataset: ImageDataset,
    config: ExpertConfig,
    *,
    score: str,
    cache_root: Path,
    consistency: ConsistencyConfig | None = None,
    score_table: Path | None = None,
    image_size: int | None = None,
    gpus_per_expert: float,
    cpus_per_expert: float,
    device: str = "auto",
    epochs: tuple[int, int] | None = None,
    log: Any = print,
) -> Precomputed:
    """Train (or reuse) the experts and scores — and the consistency networks when ``score``
    is ``consistency`` — as Ray tasks side by side; put everything the trials need into the
    object store, owned by this (the driver) process. With ``score_table``, the windows are
    ranked by ``score`` read from that folder's table (e.g. imported C-scores); the networks
    train on ``device`` (a GPU the task is given must be visible there). ``epochs``
    (first, last): the snapshots matching can reach, the only ones put in the object store
    (default: every epoch)."""
    digest = data_digest(dataset)
    cache_dir = cache_root / cache_key(config, image_size, _layout(dataset, config), digest)
    dataset_ref = ray.put(dataset_arrays(dataset))
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "manifest.json").is_file():
        _write_cache_manifest(cache_dir, dataset, config)
    resources = {"num_cpus": cpus_per_expert, "num_gpus": gpus_per_expert}
    worker = (int(cpus_per_expert), gpus_per_expert, device)
    missing = [i for i in range(config.num_experts) if not expert_file(cache_dir, i).is_file()]
    expert_refs = {}
    if missing:
        log(
            f"training {len(missing)} expert(s) as Ray tasks ({cpus_per_expert:g} CPU, "
            f"{gpus_per_expert:g} GPU each); cache: {cache_dir}"
        )
        task = ray.remote(_train_expert_task).options(**resources)
        expert_refs = {i: task.remote(config.to_dict(), i, dataset_ref, *worker) for i in missing}
    else:
        log(f"reusing {config.num_experts} cached expert(s) from {cache_dir}")
    score_dir = cache_dir
    networks: dict[int, Any] = {}
    seconds: dict[str, float] = {}
    if score == consistency_score.SCORE_NAME:
        if consistency is None:
            raise ValueError("score 'consistency' needs its ConsistencyConfig")
        score_dir = cache_root / cache_key(
            consistency, image_size, _layout(dataset, consistency), digest
        )
        networks, seconds = _submit_consistency(
            consistency, dataset_ref, score_dir, resources, worker, log
        )
    _collect(expert_refs, networks, cache_dir, consistency, score_dir, seconds, log)
    table = write_expert_scores(cache_dir, config, data_identity(dataset))
    if score == consistency_score.SCORE_NAME:
        assert consistency is not None
        table = consistency_score.finish(score_dir, dataset, consistency)
    elif score_table is not None:
        table, score_dir = read_score_table(score_table, dataset, config), score_table
        log(f"ranking by {score} from {score_table}")
    experts = ExpertSet.load(cache_dir)
    first, last = epochs or (0, config.epochs)
    kept = range(first, min(last, config.epochs) + 1)
    trajectory_refs = [
        ray.put(experts.snapshots(i, kept).numpy()) for i in range(config.num_experts)
    ]
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
    )
    return Precomputed(
        dataset_ref=dataset_ref,
        trajectory_refs=trajectory_refs,
        hardness_ref=ray.put(table.hardness(score).numpy()),
        split=split,
        config=config,
        layout=experts.layout,
        cache_dir=cache_dir,
        trained=len(missing),
        reused=config.num_experts - len(missing),
        score_dir=score_dir,
        consistency_trained=len(networks),
        consistency_reused=consistency.num_networks - len(networks) if consistency else 0,
        first_epoch=first,
    )


def read_score_table(directory: Path, dataset: ImageDataset, config: ExpertConfig) -> Any:
    """A score table from ``directory``, checked to be of this dataset and this split."""
    from selmatch.difficulty.scores import ScoreTable

    return ScoreTable.load(directory).checked(
        "--score-table", directory, dataset, config.val_fraction, config.split_seed
    )


def _submit_consistency(
    config: ConsistencyConfig,
    dataset_ref: Any,
    directory: Path,
    resources: dict[str, float],
    worker: tuple[int, float, str],
    log: Any,
) -> tuple[dict[int, Any], dict[str, float]]:
    """Submit the consistency networks not yet in ``directory``: {network: its task}, and the
    seconds of the networks already there."""
    seconds = consistency_score.prepare_directory(directory, config)
    consistency_score.write_manifest(directory, config, seconds)
    missing = [
        k
        for k in range(config.num_networks)
        if not consistency_score.network_file(directory, k).is_file()
    ]
    if not missing:
        log(f"reusing {config.num_networks} cached consistency network(s) from {directory}")
        return {}, seconds
    log(
        f"training {len(missing)} consistency network(s) as Ray tasks beside the experts "
        f"({config.describe()}); cache: {directory}"
    )
    task = ray.remote(_consistency_task).options(**resources)
    return {k: task.remote(config.to_dict(), k, dataset_ref, *worker) for k in missing}, seconds


def _collect(
    experts: dict[int, Any],
    networks: dict[int, Any],
    cache_dir: Path,
    consistency: ConsistencyConfig | None,
    score_dir: Path,
    seconds: dict[str, float],
    log: Any,
) -> None:
    """Write each task's result into its cache as soon as the task returns (in the order
    they finish), so an interruption loses only the tasks still running; ``seconds`` (the
    consistency networks' times so far) grows in their manifest."""
    pending = {ref: ("expert", i) for i, ref in experts.items()}
    pending |= {ref: ("consistency", k) for k, ref in networks.items()}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        kind, index = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # ours: one line, not Ray's traceback
            _abandon(pending)
            if isinstance(error.cause, SelmatchError):
                raise error.cause from None
            raise
        if kind == "expert":
            tensors = {
                f"epoch_{e:04d}": torch.from_numpy(row.copy())
                for e, row in enumerate(result["trajectory"])
            }
            tensors["forgetting"] = torch.from_numpy(result["forgetting"].copy())
            tensors["el2n"] = torch.from_numpy(result["el2n"].copy())
            atomic_write(expert_file(cache_dir, index), partial(save_file, tensors))
        else:
            assert consistency is not None
            consistency_score.save_network(
                score_dir,
                index,
                {
                    "held_out": torch.from_numpy(result["held_out"].copy()),
                    "probability": torch.from_numpy(result["probability"].copy()),
                },
            )
            seconds[str(index)] = result["seconds"]
            consistency_score.write_manifest(score_dir, consistency, seconds)
        log(
            f"  {kind} {'network ' if kind == 'consistency' else ''}{index}: "
            f"{result['seconds']:.0f} s"
        )


def _abandon(pending: dict[Any, Any]) -> None:
    """Cancel the tasks still pending and take their outcomes, so that Ray does not print
    each one's error again ("Unhandled error") after the one the search reports."""
    for ref in pending:
        ray.cancel(ref, force=True)
    for ref in pending:
        with contextlib.suppress(Exception):  # cancelled or failed: the first error is reported
            ray.get(ref, timeout=30)


def _write_cache_manifest(directory: Path, dataset: ImageDataset, config: ExpertConfig) -> None:
    layout = _layout(dataset, config)
    train_indices, val_indices = expert_training_indices(dataset, config)
    save_file(
        {"train_indices": train_indices, "val_indices": val_indices},
        str(directory / "indices.safetensors"),
    )
    write_json(
        directory / "manifest.json",
        {
            "kind": "selmatch-experts",
            EXPERTS_MANIFEST.key: EXPERTS_MANIFEST.version,
            "config": config.to_dict(),
            "layout": layout.to_dict(),
            "num_params": layout.numel,
            "epoch_seconds": {},
            "mean_epoch_seconds": None,
            "written_by": "selmatch_tune.flow.precompute",
            "data": data_identity(dataset),
        },
    )
