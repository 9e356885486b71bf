"""The labelled image set every stage works on, and the registry of datasets.

A dataset is held in memory as uint8 ``(N, C, H, W)`` tensors; :meth:`ImageDataset.normalize`
turns any batch of them into the float tensors the networks see. Keeping uint8 until a batch is
drawn keeps a 100,000-image Tiny ImageNet at 1.2 GB instead of 4.9 GB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from selmatch.core.config import ConfigError, SelmatchError, check_int


class DatasetNotFoundError(SelmatchError, FileNotFoundError):
    """The files of a dataset are not where we looked; the message says how to get them."""


class BadDatasetError(SelmatchError, ValueError):
    """A dataset's files are there but wrong: damaged, of the wrong size, with labels out of
    range, or laid out so that some would be left out. The message names the file or folder
    and what to do."""


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardised images back to [0, 1] floats (clamped), given the per-channel
    statistics (a dataset's, or those a saved set's manifest records)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image classification set with a fixed train/test split.

    Images are uint8 ``(N, C, H, W)``; labels are int64 ``(N,)``. ``mean``/``std`` are the
    per-channel statistics (in [0, 1] units) used by :meth:`normalize`.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    #: image files left out because they could not be decoded (``skip_bad_images``), each as
    #: ``"path: reason"``
    skipped_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{part} images must be uint8 (N, C, H, W), got {images.shape}")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(f"{part} labels must be int64 of length {images.shape[0]}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32, scaled to [0, 1] and standardised per channel."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, to [0, 1] floats (clamped), for pictures."""
        return denormalize(images, self.mean, self.std)

    def describe(self) -> str:
        c, h, w = self.image_shape
        return (
            f"{self.name}: {len(self.train_labels):,} train / {len(self.test_labels):,} test, "
            f"{self.num_classes} classes, {c}x{h}x{w}, from {self.source}"
        )

    def skipped_summary(self) -> str | None:
        """What ``skip_bad_images`` left out, in one line (None when nothing was)."""
        if not self.skipped_files:
            return None
        return (
            f"--skip-bad-images left out {len(self.skipped_files)} image file(s) that cannot "
            f"be read; the first: {self.skipped_files[0]}"
        )


@dataclass(frozen=True)
class DataOptions:
    """Where and how to look for a dataset's files."""

    data_root: Path | None = None
    download: bool = False
    image_size: int | None = None
    skip_bad_images: bool = False  # leave out image files that cannot be decoded
    data_root_from_env: bool = False  # data_root came from $SELMATCH_DATA_ROOT

    @property
    def data_root_flag(self) -> str:
        """``--data-root DIR`` as the messages name it, with where it came from."""
        origin = " (from $SELMATCH_DATA_ROOT)" if self.data_root_from_env else ""
        return f"--data-root {self.data_root}{origin}"

    def check_data_root(self) -> None:
        """A data root that was given must be a folder; only ``download`` may create it."""
        root = self.data_root
        if root is None or root.is_dir() or (self.download and not root.exists()):
            return
        what = "is not a folder" if root.exists() else "does not exist"
        raise DatasetNotFoundError(
            f"{self.data_root_flag} {what}; give the folder that holds the dataset's files"
        )


Loader = Callable[[DataOptions], ImageDataset]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and a one-line description for ``--help``."""

    name: str
    description: str
    loader: Loader


_REGISTRY: dict[str, DatasetSpec] = {}
IMAGEFOLDER_PREFIX = "imagefolder:"


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader`` under ``name`` (one registry, one base protocol)."""

    def wrap(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = DatasetSpec(name, description, loader)
        return loader

    return wrap


def dataset_names() -> list[str]:
    """Registered dataset names, plus the ``imagefolder:<path>`` form."""
    return [*_REGISTRY, IMAGEFOLDER_PREFIX + "<path>"]


def dataset_help() -> str:
    lines = [f"{spec.name}: {spec.description}" for spec in _REGISTRY.values()]
    lines.append(f"{IMAGEFOLDER_PREFIX}<path>: your own train/ and val/ (or test/) class folders")
    return "; ".join(lines)


def default_data_root() -> Path | None:
    root = os.environ.get("SELMATCH_DATA_ROOT")
    return Path(root) if root else None


def load_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    skip_bad_images: bool = False,
) -> ImageDataset:
    """Load a registered dataset (or ``imagefolder:<path>``) into memory.

    ``data_root`` defaults to ``$SELMATCH_DATA_ROOT``; either must be an existing folder (the
    system copy of Fashion-MNIST is used only when neither is given). ``download`` lets
    torchvision fetch the files when a network exists; nothing is downloaded unless asked.
    Every file read is checked (sizes, counts, label range, layout): a bad one is a
    :class:`BadDatasetError` naming it. An image file that cannot be decoded (image folders,
    Tiny ImageNet) is an error naming it, unless ``skip_bad_images``: then it is left out and
    listed in the dataset's ``skipped_files``.
    """
    from selmatch.data.image_folder import load_image_folder  # avoids a circular import

    root = Path(data_root) if data_root is not None else default_data_root()
    options = DataOptions(
        data_root=root,
        download=download,
        image_size=image_size,
        skip_bad_images=skip_bad_images,
        data_root_from_env=data_root is None and root is not None,
    )
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = Path(name[len(IMAGEFOLDER_PREFIX) :]).expanduser()
        return load_image_folder(path, options)
    if name not in _REGISTRY:
        raise ConfigError(f"--dataset must be one of {', '.join(dataset_names())}; got {name!r}")
    options.check_data_root()
    dataset = _REGISTRY[name].loader(options)
    if image_size is not None and dataset.image_shape[1:] != (image_size, image_size):
        dataset = resized(dataset, image_size)
    return dataset


def resized(dataset: ImageDataset, size: int, *, chunk: int = 4096) -> ImageDataset:
    """Every image resized to ``size`` x ``size`` (bilinear, antialiased; still uint8). The
    per-channel mean and std hardly move under resizing and are kept."""
    check_int("image_size", size, 8, 1024)

    def resize(images: torch.Tensor) -> torch.Tensor:
        parts = [
            torch.nn.functional.interpolate(
                images[i : i + chunk].float(),
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
            for i in range(0, len(images), chunk)
        ]
        return torch.cat(parts) if parts else images.new_zeros((0, images.shape[1], size, size))

    return replace(
        dataset, train_images=resize(dataset.train_images), test_images=resize(dataset.test_images)
    )
