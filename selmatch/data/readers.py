"""Readers for the built-in datasets and for a user's own class folders.

Nothing here needs a network unless ``download=True`` is asked for. Files are read without
unpickling arbitrary objects: Fashion-MNIST and CIFAR's binary version are raw bytes; CIFAR's
python version goes through a restricted unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from selmatch.config import ConfigError, SelmatchError
from selmatch.data.dataset import DataOptions, DatasetNotFoundError, ImageDataset, register_dataset
from selmatch.io import CorruptFileError, atomic_write, read_json, read_safetensors, write_json

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST family's format) into a numpy array."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(shape)


def _fashion_mnist_dir(options: DataOptions) -> Path:
    candidates = []
    if options.data_root is not None:
        candidates += [options.data_root / "fashion-mnist", options.data_root]
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    for directory in candidates:
        if (directory / "train-images-idx3-ubyte.gz").is_file():
            return directory
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}); install it with "
        "`sudo apt-get install dataset-fashion-mnist` (or run `make setup`), or put the four "
        "*-ubyte.gz files under --data-root"
    )


@register_dataset("fashion-mnist", "Fashion-MNIST 1x28x28, 10 classes (embedded default)")
def load_fashion_mnist(options: DataOptions) -> ImageDataset:
    directory = _fashion_mnist_dir(options)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
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


# --------------------------------------------------------------------------- CIFAR
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


def _read_cifar_python(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        batch = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch[label_key.encode()], dtype=np.int64)


def _read_cifar_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: records of label byte(s) then 3072 pixel bytes."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, label_bytes + 3072)
    # CIFAR-100 records are (coarse, fine): the fine label is the last label byte.
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


def _cifar_names(path: Path) -> list[str]:
    text = path.read_text().split("\n")
    return [line.strip() for line in text if line.strip()]


def _load_cifar(
    options: DataOptions,
    *,
    name: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ImageDataset:
    is_100 = num_classes == 100
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
    train: list[tuple[np.ndarray, np.ndarray]] = []
    test: list[tuple[np.ndarray, np.ndarray]] = []
    if (root / py_dir).is_dir():
        base, key = root / py_dir, ("fine_labels" if is_100 else "labels")
        train_files = ["train"] if is_100 else [f"data_batch_{i}" for i in range(1, 6)]
        train = [_read_cifar_python(base / f, key) for f in train_files]
        test = [_read_cifar_python(base / ("test" if is_100 else "test_batch"), key)]
        meta_file, meta_key = (
            ("meta", "fine_label_names") if is_100 else ("batches.meta", "label_names")
        )
        with open(base / meta_file, "rb") as handle:
            meta = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
        classes = [n.decode() for n in meta[meta_key.encode()]]
    elif (root / bin_dir).is_dir():
        base, label_bytes = root / bin_dir, (2 if is_100 else 1)
        train_files = ["train.bin"] if is_100 else [f"data_batch_{i}.bin" for i in range(1, 6)]
        train = [_read_cifar_binary(base / f, label_bytes) for f in train_files]
        test = [
            _read_cifar_binary(base / ("test.bin" if is_100 else "test_batch.bin"), label_bytes)
        ]
        classes = _cifar_names(base / ("fine_label_names.txt" if is_100 else "batches.meta.txt"))
    else:
        raise DatasetNotFoundError(
            f"{name} not found under {root} (expected {py_dir}/ or {bin_dir}/); "
            "add --download to fetch it when a network exists"
        )

    def stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())

    (train_x, train_y), (test_x, test_y) = stack(train), stack(test)
    return ImageDataset(
        name, train_x, train_y, test_x, test_y, tuple(classes), tuple(mean), tuple(std),
        source=str(base),
    )  # fmt: skip


@register_dataset("cifar10", "CIFAR-10 3x32x32, 10 classes (from --data-root)")
def load_cifar10(options: DataOptions) -> ImageDataset:
    # Statistics as used by MTT and SelMatch.
    return _load_cifar(
        options, name="cifar10", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
    )  # fmt: skip


@register_dataset("cifar100", "CIFAR-100 3x32x32, 100 classes (from --data-root)")
def load_cifar100(options: DataOptions) -> ImageDataset:
    return _load_cifar(
        options, name="cifar100", num_classes=100,
        mean=(0.5071, 0.4866, 0.4409), std=(0.2673, 0.2564, 0.2762),
    )  # fmt: skip


# --------------------------------------------------------------------------- image files
def _list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class BadImageError(SelmatchError):
    """An image file of a dataset cannot be decoded: unreadable, truncated or not an image."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot read image {path}: {reason}; fix or delete it, or pass --skip-bad-images "
            "to leave out the files that cannot be read"
        )
        self.path, self.reason = path, reason


def _decode(path: Path, image_size: int | None) -> np.ndarray:
    """One image file as uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as original:  # one open file at a time
            picture = original.convert("L" if original.mode in ("L", "1") else "RGB")
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # Pillow reports a damaged file with any of these; OSError also covers permissions.
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise BadImageError(path, reason.splitlines()[0]) from None
    if image_size is not None:
        picture = _resize_center_crop(picture, image_size)
    return np.asarray(picture, dtype=np.uint8)


def _read_images(
    paths: Sequence[Path], image_size: int | None, what: str, *, skip_bad: bool = False
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Read image files into one uint8 (N, C, H, W) tensor (RGB unless all are grayscale).

    Returns the tensor, the indices into ``paths`` it holds, and the ``(path, reason)`` of the
    files left out: none unless ``skip_bad``; without it a bad file is a :class:`BadImageError`.
    """
    if not paths:
        raise DatasetNotFoundError(f"no image files found in {what}")
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for index, path in enumerate(paths):
        try:
            array = _decode(path, image_size)
        except BadImageError as error:
            if not skip_bad:
                raise
            skipped.append((str(path), error.reason))
            continue
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            first = paths[kept[0]].name
            raise ConfigError(
                f"images in {what} have different sizes ({path.name} is {array.shape[1]}x"
                f"{array.shape[0]}, {first} is {arrays[0].shape[1]}x{arrays[0].shape[0]})"
                "; pass --image-size to resize them"
            )
        arrays.append(array)
        kept.append(index)
    if not arrays:
        raise DatasetNotFoundError(f"no readable image files in {what} ({len(skipped)} skipped)")
    if any(a.ndim == 3 for a in arrays):  # mixed: promote the grayscale ones to RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, :, :, None]
    images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
    return images, kept, skipped


def _resize_center_crop(picture: Any, size: int) -> Any:
    from PIL import Image

    width, height = picture.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    picture = picture.resize(new_size, Image.Resampling.BILINEAR)
    left = (picture.size[0] - size) // 2
    top = (picture.size[1] - size) // 2
    return picture.crop((left, top, left + size, top + size))


def _fingerprint(files: Sequence[Path], image_size: int | None) -> str:
    digest = hashlib.sha256(str(image_size).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _cached(
    files: Sequence[Path], image_size: int | None, build: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decoding thousands of JPEGs takes minutes: keep the tensors in a safetensors cache
    keyed by the files' paths, sizes and modification times."""
    cache_dir = Path.home() / ".cache" / "selmatch"
    path = cache_dir / f"images-{_fingerprint(files, image_size)}.safetensors"
    if path.is_file():
        try:
            return read_safetensors(path), read_json(path.with_suffix(".json"))
        except CorruptFileError:
            pass  # a damaged cache entry is built again
    tensors, info = build()
    try:
        write_json(path.with_suffix(".json"), info)  # first: the tensors mark a complete entry
        atomic_write(path, lambda p: save_file(tensors, p))
    except OSError:
        pass  # an unwritable cache only costs time on the next load
    return tensors, info


@dataclass(frozen=True)
class _Splits:
    """Decoded train and test images, with the labels of the files they hold."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    skipped: tuple[str, ...]  # "path: reason" of every file left out


def _read_splits(
    train: tuple[Sequence[Path], Sequence[int], str],
    test: tuple[Sequence[Path], Sequence[int], str],
    options: DataOptions,
    info: dict[str, Any],
) -> _Splits:
    """Both splits' ``(files, labels, where)`` decoded, or read back from the cache."""

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        skipped: list[tuple[str, str]] = []
        for part, (files, _, what) in (("train", train), ("test", test)):
            images, kept, bad = _read_images(
                files, options.image_size, what, skip_bad=options.skip_bad_images
            )
            tensors[f"{part}_images"] = images
            tensors[f"{part}_kept"] = torch.tensor(kept, dtype=torch.int64)
            skipped += bad
        return tensors, {**info, "skipped": skipped}

    tensors, saved = _cached([*train[0], *test[0]], options.image_size, build)
    skipped = [(str(path), str(reason)) for path, reason in saved.get("skipped", [])]
    if skipped and not options.skip_bad_images:  # cached by a run that skipped them
        raise BadImageError(Path(skipped[0][0]), skipped[0][1])
    labels = {}
    for part, (files, part_labels, _) in (("train", train), ("test", test)):
        # Caches from before --skip-bad-images hold every file.
        kept = tensors.get(f"{part}_kept", torch.arange(len(files)))
        labels[part] = torch.tensor(part_labels, dtype=torch.int64)[kept]
    return _Splits(
        tensors["train_images"], labels["train"], tensors["test_images"], labels["test"],
        tuple(f"{path}: {reason}" for path, reason in skipped),
    )  # fmt: skip


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    floats = images.double() / 255.0
    mean = floats.mean(dim=(0, 2, 3))
    std = floats.std(dim=(0, 2, 3))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _folder_split(directory: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = _list_images(directory / name) if (directory / name).is_dir() else []
        files += found
        labels += [index] * len(found)
    return files, labels


def load_image_folder(path: Path, options: DataOptions) -> ImageDataset:
    """A user's own dataset: ``path/train/<class>/*`` and ``path/val|test/<class>/*``."""
    train_dir = path / "train"
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"imagefolder:{path} needs {train_dir}/<class>/ and {path}/val/<class>/ "
            "(or test/<class>/) folders of images"
        )
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DatasetNotFoundError(f"{train_dir} must hold at least two class folders")
    splits = _read_splits(
        (*_folder_split(train_dir, classes), str(train_dir)),
        (*_folder_split(test_dir, classes), str(test_dir)),
        options, {"classes": classes},
    )  # fmt: skip
    if splits.train_images.shape[1:] != splits.test_images.shape[1:]:
        raise ConfigError(
            f"train and {test_dir.name} images of {path} differ in shape; pass --image-size"
        )
    mean, std = _channel_stats(splits.train_images)
    return ImageDataset(
        name=f"imagefolder:{path}",
        train_images=splits.train_images,
        train_labels=splits.train_labels,
        test_images=splits.test_images,
        test_labels=splits.test_labels,
        class_names=tuple(classes),
        mean=mean,
        std=std,
        source=str(path),
        skipped_files=splits.skipped,
    )


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@register_dataset("tiny-imagenet", "Tiny ImageNet 3x64x64, 200 classes (from --data-root)")
def load_tiny_imagenet(options: DataOptions) -> ImageDataset:
    """Tiny ImageNet's ``val`` split is the test set (its ``test`` split has no labels)."""
    if options.data_root is None:
        raise DatasetNotFoundError(
            "tiny-imagenet needs --data-root (a folder holding tiny-imagenet-200/); "
            "add --download to fetch it there when a network exists"
        )
    base = options.data_root / "tiny-imagenet-200"
    if not base.is_dir() and options.download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, str(options.data_root))
    if not (base / "wnids.txt").is_file():
        raise DatasetNotFoundError(
            f"tiny-imagenet not found: expected {base}/wnids.txt, train/ and val/; "
            "add --download to fetch it when a network exists"
        )
    wnids = [w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()]
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    train_files: list[Path] = []
    train_labels: list[int] = []
    for index, wnid in enumerate(wnids):
        found = _list_images(base / "train" / wnid / "images")
        train_files += found
        train_labels += [index] * len(found)
    annotations = (base / "val" / "val_annotations.txt").read_text().splitlines()
    val_pairs = sorted(line.split("\t")[:2] for line in annotations if line.strip())
    test_files = [base / "val" / "images" / name for name, _ in val_pairs]
    test_labels = [wnids.index(wnid) for _, wnid in val_pairs]

    splits = _read_splits(
        (train_files, train_labels, f"{base}/train"), (test_files, test_labels, f"{base}/val"),
        options, {},
    )  # fmt: skip
    return ImageDataset(
        name="tiny-imagenet",
        train_images=splits.train_images,
        train_labels=splits.train_labels,
        test_images=splits.test_images,
        test_labels=splits.test_labels,
        class_names=tuple(words.get(w, w) for w in wnids),
        mean=(0.485, 0.456, 0.406),  # ImageNet statistics, as in MTT and SelMatch
        std=(0.229, 0.224, 0.225),
        source=str(base),
        skipped_files=splits.skipped,
    )
