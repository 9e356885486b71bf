"""Precompute once: expert trajectories and difficulty scores, trained by Ray tasks and owned
by the driver in Ray's object store.

Each expert is one Ray task (a GPU each where the cluster has GPUs). A task *returns* its
trajectory and scores as numpy arrays, so the driver owns them (an object ``ray.put`` inside a
worker would die with it); the driver also writes them in :mod:`selmatch.experts`' format to a
cache folder keyed by dataset, model and expert settings, and a later search with the same
settings reuses that cache instead of training again. Trials receive object references
(through ``tune.with_parameters``) and never recompute or reload anything from disk.
"""

from __future__ import annotations

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

from selmatch.data import HoldoutSplit, ImageDataset, holdout_split
from selmatch.experts import (
    ExpertConfig,
    ExpertSet,
    expert_file,
    expert_training_indices,
    train_one_expert,
    write_expert_scores,
)
from selmatch.io import atomic_write, write_json
from selmatch.models import build_model
from selmatch.params import ParamLayout
from selmatch.train import resolve_device


def cache_key(config: ExpertConfig, image_size: int | None = None) -> str:
    """A folder name that changes whenever anything that shapes an expert changes (the
    images' size too, when the dataset is resized)."""
    identity = config.identity()
    if image_size is not None:
        identity = {**identity, "image_size": image_size}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{config.dataset.replace(':', '_').replace('/', '_')}-{digest[:12]}"


def _train_expert_task(
    config_dict: dict[str, Any], index: int, arrays: dict[str, Any], threads: int
) -> dict[str, Any]:
    """Ray task body: train expert ``index`` on the driver's dataset (from the object store:
    worker nodes need no copy of the data) and return numpy arrays (driver-owned)."""
    torch.set_num_threads(max(1, threads))
    config = ExpertConfig.from_dict(config_dict)
    dataset = dataset_from_arrays(arrays)
    train_indices, _ = expert_training_indices(dataset, config)
    started = time.perf_counter()
    tensors, seconds, _ = train_one_expert(
        dataset, config, index, train_indices, device=resolve_device("auto")
    )
    epochs = sorted(k for k in tensors if k.startswith("epoch_"))
    return {
        "trajectory": torch.stack([tensors[k] for k in epochs]).numpy(),
        "forgetting": tensors["forgetting"].numpy(),
        "el2n": tensors["el2n"].numpy(),
        "epoch_seconds": seconds,
        "seconds": time.perf_counter() - started,
    }


@dataclass
class Precomputed:
    """Object references the trials get, and what the driver knows about them."""

    dataset_ref: ray.ObjectRef
    trajectory_refs: list[ray.ObjectRef]
    hardness_ref: ray.ObjectRef
    split: HoldoutSplit
    config: ExpertConfig
    layout: ParamLayout
    cache_dir: Path
    trained: int
    reused: int


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
    }


def dataset_from_arrays(arrays: dict[str, Any]) -> ImageDataset:
    """Rebuild the dataset inside a trial. Object-store arrays are read-only: copy once."""
    return ImageDataset(
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


def precompute(
    dataset: ImageDataset,
    config: ExpertConfig,
    *,
    score: str,
    cache_root: Path,
    image_size: int | None = None,
    gpus_per_expert: float,
    cpus_per_expert: float,
    log: Any = print,
) -> Precomputed:
    """Train (or reuse) the experts and scores; put everything the trials need into the
    object store, owned by this (the driver) process."""
    cache_dir = cache_root / cache_key(config, image_size)
    dataset_ref = ray.put(dataset_arrays(dataset))
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "manifest.json").is_file():
        _write_cache_manifest(cache_dir, dataset, config)
    missing = [i for i in range(config.num_experts) if not expert_file(cache_dir, i).is_file()]
    if missing:
        log(f"training {len(missing)} expert(s) as Ray tasks ({cpus_per_expert:g} CPU, "
            f"{gpus_per_expert:g} GPU each); cache: {cache_dir}")  # fmt: skip
        task = ray.remote(_train_expert_task).options(
            num_cpus=cpus_per_expert, num_gpus=gpus_per_expert
        )
        refs = {
            i: task.remote(config.to_dict(), i, dataset_ref, int(cpus_per_expert)) for i in missing
        }
        for index, ref in refs.items():
            result = ray.get(ref)
            tensors = {f"epoch_{e:04d}": torch.from_numpy(row.copy())
                       for e, row in enumerate(result["trajectory"])}  # fmt: skip
            tensors["forgetting"] = torch.from_numpy(result["forgetting"].copy())
            tensors["el2n"] = torch.from_numpy(result["el2n"].copy())
            atomic_write(expert_file(cache_dir, index), partial(save_file, tensors))
            log(f"  expert {index}: {result['seconds']:.0f} s")
    else:
        log(f"reusing {config.num_experts} cached expert(s) from {cache_dir}")
    table = write_expert_scores(cache_dir, config)
    experts = ExpertSet.load(cache_dir)
    trajectory_refs = [ray.put(experts.trajectory(i).numpy()) for i in range(config.num_experts)]
    split = holdout_split(
        dataset.train_labels, dataset.num_classes, val_fraction=config.val_fraction,
        seed=config.split_seed,
    )  # fmt: skip
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
    )


def _write_cache_manifest(directory: Path, dataset: ImageDataset, config: ExpertConfig) -> None:
    layout = ParamLayout.of(build_model(config.model, dataset.image_shape, dataset.num_classes))
    train_indices, val_indices = expert_training_indices(dataset, config)
    save_file(
        {"train_indices": train_indices, "val_indices": val_indices},
        str(directory / "indices.safetensors"),
    )
    write_json(directory / "manifest.json", {
        "kind": "selmatch-experts", "format_version": 1, "config": config.to_dict(),
        "layout": layout.to_dict(), "num_params": layout.numel, "epoch_seconds": {},
        "mean_epoch_seconds": None, "written_by": "selmatch_tune.precompute",
    })  # fmt: skip
