"""The saved form of a small training set (distilled, selected or random): one loader, no pickle.

A set is a folder holding

- ``set.safetensors``: ``images`` (float32, normalised with the dataset's mean/std),
  ``labels`` (int64), ``distill_mask`` (uint8: 1 = ``D_distill``, learned and augmented with
  DSA at evaluation; 0 = ``D_select``, real and augmented with crop+flip), optionally
  ``source_indices`` (int64 training-set indices the images started from) and ``learned_lr``;
- ``manifest.json``: the dataset and its normalisation, IPC, method, every setting that made
  the set, the package and torch versions.

Writes go to a temporary name first and are renamed into place, so an interrupted save never
leaves a half-written set that looks complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from selmatch.core.config import SelmatchError
from selmatch.core.io import atomic_write, read_json, read_safetensors, versions, write_json
from selmatch.core.migrate import SET_MANIFEST, NewerFileError, migrate

TENSOR_FILE = "set.safetensors"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = ("dataset", "mean", "std", "num_classes", "ipc", "method")


class SyntheticSetError(SelmatchError):
    """A saved set is missing, incomplete or inconsistent."""


@dataclass
class SyntheticSet:
    images: torch.Tensor
    labels: torch.Tensor
    distill_mask: torch.Tensor
    manifest: dict[str, Any]
    learned_lr: float | None = None
    source_indices: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.distill_mask.shape != (n,):
            raise SyntheticSetError("images, labels and distill_mask disagree in length")
        missing = [k for k in REQUIRED_KEYS if k not in self.manifest]
        if missing:
            raise SyntheticSetError(f"manifest lacks {', '.join(missing)}")

    @property
    def num_distill(self) -> int:
        return int(self.distill_mask.sum())

    def save(self, directory: str | Path) -> Path:
        """Write the set to ``directory`` (created); returns the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "images": self.images.detach().float().cpu().contiguous(),
            "labels": self.labels.cpu().to(torch.int64).contiguous(),
            "distill_mask": self.distill_mask.cpu().to(torch.uint8).contiguous(),
        }
        if self.source_indices is not None:
            tensors["source_indices"] = self.source_indices.cpu().to(torch.int64).contiguous()
        if self.learned_lr is not None:
            tensors["learned_lr"] = torch.tensor([float(self.learned_lr)])
        manifest = {
            "kind": "selmatch-set",
            **self.manifest,
            SET_MANIFEST.key: SET_MANIFEST.version,
            "size": int(self.images.shape[0]),
            "num_distill": self.num_distill,
            "image_shape": list(self.images.shape[1:]),
            "versions": versions(),
        }
        atomic_write(directory / TENSOR_FILE, lambda p: save_file(tensors, p))
        write_json(directory / MANIFEST_FILE, manifest)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SyntheticSet:
        """Read a set written by :meth:`save`. Every way the files can be wrong (missing, not
        JSON, keys or tensors missing, a truncated safetensors file) is a one-line
        :class:`~selmatch.core.config.SelmatchError` naming the file."""
        directory = Path(directory)
        tensor_path, manifest_path = directory / TENSOR_FILE, directory / MANIFEST_FILE
        if not tensor_path.is_file() or not manifest_path.is_file():
            raise SyntheticSetError(
                f"--set {directory} is not a saved set (needs {TENSOR_FILE} and {MANIFEST_FILE})"
            )
        manifest = _checked_manifest(read_json(manifest_path), manifest_path)
        tensors = read_safetensors(tensor_path)
        missing = [k for k in ("images", "labels", "distill_mask") if k not in tensors]
        if missing:
            raise SyntheticSetError(f"{tensor_path} lacks the tensor(s) {', '.join(missing)}")
        _check_tensors(tensors, manifest, tensor_path)
        images, lr = tensors["images"], tensors.get("learned_lr")
        try:
            return cls(
                images=images,
                labels=tensors["labels"],
                distill_mask=tensors["distill_mask"].to(torch.bool),
                manifest=manifest,
                learned_lr=None if lr is None or lr.numel() == 0 else float(lr.flatten()[0]),
                source_indices=tensors.get("source_indices"),
            )
        except SyntheticSetError as error:
            raise SyntheticSetError(f"{directory}: {error}") from None


def _check_tensors(tensors: dict[str, torch.Tensor], manifest: dict[str, Any], path: Path) -> None:
    """Refuse, naming ``path``, tensors that no reader of a set could use as they are: images
    not float (N, C, H, W) of the manifest's channels (and recorded shape and size), pixels
    that are not finite, labels not N integers in [0, num_classes), a mask not N zeros and
    ones, source indices not N integers ≥ 0, a learned lr that is not finite."""
    images, labels, mask = tensors["images"], tensors["labels"], tensors["distill_mask"]
    if images.dim() != 4 or not images.is_floating_point():
        raise SyntheticSetError(
            f"{path}: images must be float (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    n, shape = images.shape[0], manifest.get("image_shape")
    if not len(manifest["mean"]) == len(manifest["std"]) == images.shape[1]:
        raise SyntheticSetError(
            f"{path.parent / MANIFEST_FILE}: mean and std need one value per image channel "
            f"({images.shape[1]} in {path.name})"
        )
    if shape is not None and list(images.shape[1:]) != shape:
        raise SyntheticSetError(
            f"{path}: images are {tuple(images.shape[1:])}, the manifest says {tuple(shape)}"
        )
    if manifest.get("size") not in (None, n):
        raise SyntheticSetError(f"{path}: {n} images, the manifest says {manifest['size']}")
    bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
    if bad:
        raise SyntheticSetError(f"{path}: NaN or infinite pixels in {bad} of the {n} images")
    classes = manifest["num_classes"]
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (n,):
        raise SyntheticSetError(
            f"{path}: labels must be {n} integers (one per image), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise SyntheticSetError(
            f"{path}: labels must lie in [0, {classes}) (num_classes {classes}), got "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    if (
        mask.is_floating_point()
        or mask.shape != (n,)
        or not bool(((mask == 0) | (mask == 1)).all())
    ):
        raise SyntheticSetError(
            f"{path}: distill_mask must be {n} zeros and ones (one per image), got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    _check_extras(tensors, n, path)


def _check_extras(tensors: dict[str, torch.Tensor], n: int, path: Path) -> None:
    source, lr = tensors.get("source_indices"), tensors.get("learned_lr")
    if source is not None and (
        source.is_floating_point() or source.shape != (n,) or (n and int(source.min()) < 0)
    ):
        raise SyntheticSetError(
            f"{path}: source_indices must be {n} integers ≥ 0 (one per image), got "
            f"{source.dtype} {tuple(source.shape)}"
        )
    if lr is not None and lr.numel() and not bool(torch.isfinite(lr.flatten()[:1].float()).all()):
        raise SyntheticSetError(f"{path}: learned_lr must be finite, got {float(lr.flatten()[0])}")


def _checked_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` if it is a set manifest this version reads, with the keys every reader of a
    set relies on (the dataset and its normalisation checked for their kinds)."""
    if not isinstance(manifest, dict) or manifest.get("kind") != "selmatch-set":
        raise SyntheticSetError(f"{path} is not a selmatch set manifest (no kind: selmatch-set)")
    try:
        manifest = migrate(SET_MANIFEST, manifest, path)
    except NewerFileError as error:
        raise SyntheticSetError(str(error)) from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise SyntheticSetError(f"{path} lacks {', '.join(missing)}")
    for key in ("mean", "std"):
        value = manifest[key]
        if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
            raise SyntheticSetError(f"{path}: {key} must be a list of numbers, got {value!r}")
    classes = manifest["num_classes"]
    if not _is_number(classes) or classes != int(classes) or classes < 1:
        raise SyntheticSetError(f"{path}: num_classes must be an integer ≥ 1, got {classes!r}")
    manifest["num_classes"] = int(classes)
    shape = manifest.get("image_shape")
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 3 and all(_is_number(v) for v in shape)
    ):
        raise SyntheticSetError(f"{path}: image_shape must be [C, H, W], got {shape!r}")
    if not isinstance(manifest["dataset"], str):
        raise SyntheticSetError(f"{path}: dataset must be a string, got {manifest['dataset']!r}")
    return manifest


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
