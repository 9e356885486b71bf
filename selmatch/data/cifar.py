"""CIFAR-10 and CIFAR-100, in their python or binary version, from ``--data-root``.

The binary version is raw bytes; the python version goes through a restricted unpickler that
only rebuilds numpy arrays.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from selmatch.data._shared import COPY_AGAIN, _check_labels
from selmatch.data.dataset import (
    BadDatasetError,
    DataOptions,
    DatasetNotFoundError,
    ImageDataset,
    register_dataset,
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches: plain containers and numpy arrays, nothing else."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles store raw bytes; harmless
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


CIFAR_PIXELS = 3 * 32 * 32
#: what a damaged pickle may raise while it is read
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    MemoryError,
)


def _unpickle(path: Path) -> dict[bytes, Any]:
    """One of CIFAR's python files as its dict, or an error naming the file."""
    try:
        with open(path, "rb") as handle:
            loaded = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except _UNPICKLE_ERRORS as error:
        reason = (str(error) or type(error).__name__).splitlines()[0]
        raise BadDatasetError(
            f"{path} is not a readable CIFAR python file ({reason}); {COPY_AGAIN}"
        ) from None
    except OSError as error:
        raise BadDatasetError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(loaded, dict):
        raise BadDatasetError(f"{path} is not a CIFAR python file (not a dict); {COPY_AGAIN}")
    return loaded


def _read_cifar_python(
    path: Path, label_key: str, num_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    missing = [k for k in ("data", label_key) if k.encode() not in batch]
    if missing:
        raise BadDatasetError(f"{path} lacks {', '.join(missing)}; {COPY_AGAIN}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key.encode()])
    if data.ndim != 2 or data.shape[1] != CIFAR_PIXELS or data.dtype != np.uint8:
        raise BadDatasetError(
            f"{path}: data is {data.dtype} of shape {data.shape}, not uint8 rows of "
            f"{CIFAR_PIXELS} (3x32x32); {COPY_AGAIN}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise BadDatasetError(
            f"{path} holds {len(data):,} images but {labels.size:,} {label_key} (integers "
            f"expected, one per image); {COPY_AGAIN}"
        )
    _check_labels(path, labels, num_classes, name)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_binary(
    path: Path, label_bytes: int, num_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) then 3072 pixel bytes."""
    record = label_bytes + CIFAR_PIXELS
    size = path.stat().st_size
    if size == 0 or size % record:
        raise BadDatasetError(
            f"{path} holds {size:,} bytes, not a whole number (> 0) of {record}-byte records "
            f"({label_bytes} label byte(s) + 3x32x32 pixels); {COPY_AGAIN}"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    # CIFAR-100 records are (coarse, fine): the fine label is the last label byte.
    labels = raw[:, label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, num_classes, name)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _cifar_names(path: Path, key: str | None, num_classes: int, name: str) -> list[str]:
    """The class names: from the python ``meta`` pickle's ``key``, or one a line (binary)."""
    if key is None:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise BadDatasetError(f"{path} is not a text file; {COPY_AGAIN}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        listed = _unpickle(path).get(key.encode(), [])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in listed]
    if len(names) != num_classes:
        raise BadDatasetError(
            f"{path} lists {len(names)} class names; {name} has {num_classes}: {COPY_AGAIN}"
        )
    return names


def _cifar_files(options: DataOptions, name: str, is_100: bool) -> tuple[Path, bool]:
    """The folder of CIFAR's files under ``--data-root`` (downloading it when asked), and
    whether it is the python version."""
    py_dir = "cifar-100-python" if is_100 else "cifar-10-batches-py"
    bin_dir = "cifar-100-binary" if is_100 else "cifar-10-batches-bin"
    root = options.data_root
    if root is None:
        raise DatasetNotFoundError(
            f"{name} needs --data-root (a folder holding {py_dir}/ or {bin_dir}/); "
            "add --download to fetch it there when a network exists"
        )
    if options.download and not (root / py_dir).is_dir() and not (root / bin_dir).is_dir():
        from torchvision import datasets

        tv_class = datasets.CIFAR100 if is_100 else datasets.CIFAR10
        tv_class(str(root), train=True, download=True)
    for base, python in ((root / py_dir, True), (root / bin_dir, False)):
        if base.is_dir():
            return base, python
    raise DatasetNotFoundError(
        f"{name} not found under {root} (expected {py_dir}/ or {bin_dir}/); "
        "add --download to fetch it when a network exists"
    )


def _load_cifar(
    options: DataOptions,
    *,
    name: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ImageDataset:
    is_100 = num_classes == 100
    base, python = _cifar_files(options, name, is_100)
    if python:
        train_files = ["train"] if is_100 else [f"data_batch_{i}" for i in range(1, 6)]
        test_file = "test" if is_100 else "test_batch"
        names_file, names_key = (
            ("meta", "fine_label_names") if is_100 else ("batches.meta", "label_names")
        )
    else:
        train_files = ["train.bin"] if is_100 else [f"data_batch_{i}.bin" for i in range(1, 6)]
        test_file = "test.bin" if is_100 else "test_batch.bin"
        names_file = "fine_label_names.txt" if is_100 else "batches.meta.txt"
        names_key = None
    missing = [f for f in [*train_files, test_file, names_file] if not (base / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{base} lacks {', '.join(missing)}; copy the folder again")

    label_key = "fine_labels" if is_100 else "labels"

    def read(file: str) -> tuple[np.ndarray, np.ndarray]:
        if python:
            return _read_cifar_python(base / file, label_key, num_classes, name)
        return _read_cifar_binary(base / file, 2 if is_100 else 1, num_classes, name)

    train, test = [read(f) for f in train_files], [read(test_file)]
    classes = _cifar_names(base / names_file, names_key, num_classes, name)

    def stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())

    (train_x, train_y), (test_x, test_y) = stack(train), stack(test)
    return ImageDataset(
        name,
        train_x,
        train_y,
        test_x,
        test_y,
        tuple(classes),
        tuple(mean),
        tuple(std),
        source=str(base),
    )


@register_dataset("cifar10", "CIFAR-10 3x32x32, 10 classes (from --data-root)")
def load_cifar10(options: DataOptions) -> ImageDataset:
    # Statistics as used by MTT and SelMatch.
    return _load_cifar(
        options,
        name="cifar10",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
    )


@register_dataset("cifar100", "CIFAR-100 3x32x32, 100 classes (from --data-root)")
def load_cifar100(options: DataOptions) -> ImageDataset:
    return _load_cifar(
        options,
        name="cifar100",
        num_classes=100,
        mean=(0.5071, 0.4866, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    )
