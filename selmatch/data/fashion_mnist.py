"""Fashion-MNIST: its gzipped IDX files, from ``--data-root`` or the system copy.

The files are raw bytes: nothing is unpickled.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

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

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801  # unsigned bytes (0x08), in 3 dimensions or 1
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except gzip.BadGzipFile as error:
        if str(error).startswith("Not a gzipped file"):
            raise BadDatasetError(f"{path} is not gzip-compressed; {COPY_AGAIN}") from None
        raise BadDatasetError(f"{path} is damaged ({error}); {COPY_AGAIN}") from None
    except EOFError:
        raise BadDatasetError(
            f"{path} is truncated (its gzip stream ends early); {COPY_AGAIN}"
        ) from None
    except zlib.error as error:
        raise BadDatasetError(f"{path} is damaged ({error}); {COPY_AGAIN}") from None
    except OSError as error:
        raise BadDatasetError(f"cannot read {path}: {error.strerror or error}") from None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One gzipped IDX file (the MNIST family's format) into a numpy array, checked against
    ``magic`` (``IDX_IMAGES`` or ``IDX_LABELS``) and its own header's shape."""
    raw = _gunzip(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    kind = "images" if magic == IDX_IMAGES else "labels"
    found = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or found != magic:
        got = f"magic number {found:#06x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise BadDatasetError(
            f"{path} is not an IDX file of {kind} ({got}, expected {magic:#06x}); "
            "check that each file holds what its name says"
        )
    if len(raw) < header:
        raise BadDatasetError(f"{path} ends inside its IDX header; {COPY_AGAIN}")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != math.prod(shape):
        raise BadDatasetError(
            f"{path} holds {len(raw) - header:,} bytes of {kind} but its header "
            f"({' x '.join(map(str, shape))}) says {math.prod(shape):,}; {COPY_AGAIN}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_mnist_dir(options: DataOptions) -> Path:
    """The folder of the four files: under ``--data-root`` when one is given (never the
    system copy then), else the system copy. A root from ``$SELMATCH_DATA_ROOT`` (one folder
    for every dataset, as the cluster's nodes set it) is looked in first, then the system
    copy: the variable names where the datasets are that need a root, not a promise that
    Fashion-MNIST is there."""
    root = options.data_root
    candidates = [root / "fashion-mnist", root] if root is not None else [FASHION_MNIST_SYSTEM_DIR]
    if root is not None and options.data_root_from_env:
        candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for directory in candidates:
        if (directory / FASHION_MNIST_FILES[0]).is_file():
            missing = [f for f in FASHION_MNIST_FILES if not (directory / f).is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"{directory} holds {FASHION_MNIST_FILES[0]} but lacks {', '.join(missing)}; "
                    "put all four *-ubyte.gz files there"
                )
            return directory
    install = "`sudo apt-get install dataset-fashion-mnist` or `make setup`"
    if root is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found (looked in {FASHION_MNIST_SYSTEM_DIR}); install it with "
            f"{install}, or put the four *-ubyte.gz files under --data-root"
        )
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found under {options.data_root_flag} (looked for "
        f"{FASHION_MNIST_FILES[0]} in {candidates[0]} and {root}); put the four *-ubyte.gz files "
        f"there, or give no data root to use the system copy (install it with {install})"
    )


def _read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, of equal counts, labels in 0..9."""
    images_path = directory / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = directory / f"{prefix}-labels-idx1-ubyte.gz"
    images, labels = _read_idx(images_path, IDX_IMAGES), _read_idx(labels_path, IDX_LABELS)
    if len(images) != len(labels) or len(images) == 0:
        raise BadDatasetError(
            f"{images_path} holds {len(images):,} images and {labels_path} {len(labels):,} "
            "labels; they must be equal and not 0: copy them again"
        )
    _check_labels(labels_path, labels, len(FASHION_MNIST_CLASSES), "Fashion-MNIST")
    return images, labels


@register_dataset("fashion-mnist", "Fashion-MNIST 1x28x28, 10 classes (embedded default)")
def load_fashion_mnist(options: DataOptions) -> ImageDataset:
    directory = _fashion_mnist_dir(options)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = _read_idx_pair(directory, prefix)
        parts[split] = (
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        )
    return ImageDataset(
        name="fashion-mnist",
        train_images=parts["train"][0],
        train_labels=parts["train"][1],
        test_images=parts["test"][0],
        test_labels=parts["test"][1],
        class_names=FASHION_MNIST_CLASSES,
        mean=(0.2860,),  # statistics of the 60,000 training images
        std=(0.3530,),
        source=str(directory),
    )
