"""Datasets: the registry, the in-memory image set, and class-balanced indexing."""

from selmatch.data import readers as _readers  # noqa: F401  (registers the built-in datasets)
from selmatch.data.balance import (
    HoldoutSplit,
    balanced_subset,
    holdout_split,
    indices_by_class,
    smallest_class_size,
)
from selmatch.data.dataset import (
    BadDatasetError,
    DatasetNotFoundError,
    ImageDataset,
    dataset_help,
    dataset_names,
    load_dataset,
    register_dataset,
)
from selmatch.data.readers import BadImageError

__all__ = [
    "BadDatasetError",
    "BadImageError",
    "DatasetNotFoundError",
    "HoldoutSplit",
    "ImageDataset",
    "balanced_subset",
    "dataset_help",
    "dataset_names",
    "holdout_split",
    "indices_by_class",
    "load_dataset",
    "register_dataset",
    "smallest_class_size",
]
