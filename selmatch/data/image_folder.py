"""Folders of image files: a user's own ``train/<class>/`` and ``val/<class>/`` folders.

Listing and checking the files, decoding them (Pillow) into one tensor a split, and a cache
of the decoded tensors; Tiny ImageNet's reader uses the same steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from selmatch.core.config import ConfigError, SelmatchError
from selmatch.core.io import CorruptFileError, atomic_write, read_json, read_safetensors, write_json
from selmatch.data.dataset import BadDatasetError, DataOptions, DatasetNotFoundError, ImageDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


#: the fewest training images of a class: the validation hold-out takes at least one
TRAIN_FEWEST = 2


def _check_regular(path: Path) -> None:
    """``path`` (which exists or is a link) is a regular file: a FIFO would hang the reader,
    and a folder or a broken link would be left out without a word."""
    if path.is_file():
        return
    if path.is_dir():
        problem = "a folder, not an image file"
    elif not path.exists():
        problem = "a broken symbolic link"
    else:
        problem = "not a regular file (a FIFO, socket or device)"
    raise BadDatasetError(f"{path} is {problem}; replace it with the image file or remove it")


def _list_images(directory: Path) -> list[Path]:
    """The image files of one class folder, by name. Hidden entries (``.DS_Store``,
    ``.ipynb_checkpoints/``) belong to tools and are passed over; other files than images are
    ignored; a sub-folder or an entry that is not a regular file is an error naming it."""
    found = []
    for path in sorted(directory.iterdir()):
        image = path.suffix.lower() in IMAGE_SUFFIXES
        if path.name.startswith(".") or (path.is_file() and not image):
            continue
        if path.is_dir() and not image:
            raise BadDatasetError(
                f"{path} is a folder inside the class folder {directory}; its images would be "
                f"left out: move them into {directory} and remove the folder"
            )
        _check_regular(path)
        found.append(path)
    return found


def _check_class_size(folder: Path, count: int, fewest: int, *, after_skip: bool = False) -> None:
    """A class folder holds at least ``fewest`` images (``TRAIN_FEWEST`` for training)."""
    if count >= fewest:
        return
    holds = "holds no image files" if count == 0 else "holds a single image"
    if after_skip:
        holds = f"keeps {count} image(s) once --skip-bad-images leaves out the unreadable ones"
    why = " (the validation slice holds out at least one)" if fewest == TRAIN_FEWEST else ""
    raise BadDatasetError(
        f"class folder {folder} {holds}; a class needs at least {fewest} here{why}: add "
        "images, or remove the class from every split"
    )


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
    parts: Sequence[tuple[Sequence[Path], str]], image_size: int | None, *, skip_bad: bool
) -> tuple[list[torch.Tensor], list[list[int]], list[tuple[str, str]]]:
    """Decode each part's ``(files, where)`` into one uint8 (N, C, H, W) tensor.

    Every image of every part must have one size, and one mode: grayscale ones among mostly
    colour ones are made RGB (lossless); a minority of colour ones is an error (making them
    grayscale would lose their colour, making all RGB would triple the data). Returns the
    tensors, the indices into each part's files they hold, and the ``(path, reason)`` of the
    files left out: none unless ``skip_bad``; without it a bad file is a :class:`BadImageError`.
    """
    decoded: list[list[np.ndarray]] = []
    kept: list[list[int]] = []
    skipped: list[tuple[str, str]] = []
    reference: tuple[Path, tuple[int, ...]] | None = None  # the first image and its size
    first: dict[int, Path] = {}  # the first file of each number of dimensions (2: grayscale)
    counts = {2: 0, 3: 0}
    for paths, where in parts:
        if not paths:
            raise DatasetNotFoundError(f"no image files found in {where}")
        arrays, indices, left_out = [], [], len(skipped)
        for index, path in enumerate(paths):
            try:
                array = _decode(path, image_size)
            except BadImageError as error:
                if not skip_bad:
                    raise
                skipped.append((str(path), error.reason))
                continue
            if reference is None:
                reference = (path, array.shape[:2])
            elif array.shape[:2] != reference[1]:
                (h, w), (h0, w0) = array.shape[:2], reference[1]
                raise ConfigError(
                    f"images differ in size: {path} is {w}x{h}, {reference[0]} is {w0}x{h0}; "
                    "pass --image-size PX to resize them all"
                )
            first.setdefault(array.ndim, path)
            counts[array.ndim] += 1
            arrays.append(array)
            indices.append(index)
        if not arrays:
            raise DatasetNotFoundError(
                f"no readable image files in {where} ({len(skipped) - left_out} skipped)"
            )
        decoded.append(arrays)
        kept.append(indices)
    rgb = _colour(counts, first)
    return [_stack(arrays, rgb) for arrays in decoded], kept, skipped


def _colour(counts: dict[int, int], first: dict[int, Path]) -> bool:
    """Whether the images are read as RGB: all colour, or colour at least as often as
    grayscale (the grayscale ones are then promoted); a few colour ones among grayscale are
    an error naming one of each."""
    colour, gray = counts[3], counts[2]
    if colour == 0 or colour >= gray:
        return colour > 0
    some = "it" if colour == 1 else "them"
    raise BadDatasetError(
        f"{first[3]} is a colour image among {gray} grayscale ones (e.g. {first[2]})"
        + (f", as are {colour - 1} more" if colour > 1 else "")
        + f"; convert {some} to grayscale (or every image to RGB): a dataset's images need "
        "one number of channels, and --image-size does not change it"
    )


def _stack(arrays: list[np.ndarray], rgb: bool) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` arrays as one uint8 ``(N, C, H, W)`` tensor."""
    if rgb:
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, :, :, None]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def _resize_center_crop(picture: Any, size: int) -> Any:
    from PIL import Image

    width, height = picture.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    picture = picture.resize(new_size, Image.Resampling.BILINEAR)
    left = (picture.size[0] - size) // 2
    top = (picture.size[1] - size) // 2
    return picture.crop((left, top, left + size, top + size))


#: changes whenever decoding does (2: one mode for train and test alike)
CACHE_VERSION = 2


def _fingerprint(files: Sequence[Path], image_size: int | None) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}:{image_size}".encode())
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

    skip = options.skip_bad_images

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        parts = [(train[0], train[2]), (test[0], test[2])]
        images, kept, skipped = _read_images(parts, options.image_size, skip_bad=skip)
        for index, part in enumerate(("train", "test")):
            tensors[f"{part}_images"] = images[index]
            tensors[f"{part}_kept"] = torch.tensor(kept[index], dtype=torch.int64)
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
        tensors["train_images"],
        labels["train"],
        tensors["test_images"],
        labels["test"],
        tuple(f"{path}: {reason}" for path, reason in skipped),
    )


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    floats = images.double() / 255.0
    mean = floats.mean(dim=(0, 2, 3))
    std = floats.std(dim=(0, 2, 3))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _class_folders(split: Path) -> dict[str, Path]:
    """The class folders of one split by name (hidden ones passed over); an image file beside
    them would be left out, and is an error naming it."""
    folders = {}
    for path in sorted(split.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            folders[path.name] = path
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            raise BadDatasetError(
                f"{path} lies outside the class folders of {split} and would be left out; "
                f"move it into {split}/<class>/"
            )
    return folders


def _check_same_classes(
    train_dir: Path, train: dict[str, Path], test_dir: Path, test: dict[str, Path]
) -> None:
    """Every class has a folder in both splits: one missing from train/ would be dropped,
    one missing from val/ never tested."""
    for have, lack, split in ((test, train, train_dir), (train, test, test_dir)):
        extra = [name for name in have if name not in lack]
        if extra:
            more = f" (nor do {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise BadDatasetError(
                f"class folder {have[extra[0]]} has no {split / extra[0]}{more}; every class "
                "needs images in both splits: add them, or remove the class"
            )


def _folder_split(folders: Sequence[Path], fewest: int) -> tuple[list[Path], list[int]]:
    """The image files of each class folder, and their labels (the folder's index)."""
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(folders):
        found = _list_images(folder)
        _check_class_size(folder, len(found), fewest)
        files += found
        labels += [index] * len(found)
    return files, labels


def load_image_folder(path: Path, options: DataOptions) -> ImageDataset:
    """A user's own dataset: ``path/train/<class>/*`` and ``path/val|test/<class>/*``.

    Every file is checked before anything is decoded: the same classes in both splits, at
    least ``TRAIN_FEWEST`` training images and one test image a class, no sub-folders, FIFOs
    or broken links in a class folder (see :func:`_list_images`)."""
    train_dir = path / "train"
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetNotFoundError(
            f"imagefolder:{path} needs {train_dir}/<class>/ and {path}/val/<class>/ "
            "(or test/<class>/) folders of images"
        )
    train_classes, test_classes = _class_folders(train_dir), _class_folders(test_dir)
    if len(train_classes) < 2:
        raise DatasetNotFoundError(f"{train_dir} must hold at least two class folders")
    _check_same_classes(train_dir, train_classes, test_dir, test_classes)
    classes = list(train_classes)
    splits = _read_splits(
        (*_folder_split(list(train_classes.values()), TRAIN_FEWEST), str(train_dir)),
        (*_folder_split([test_classes[c] for c in classes], 1), str(test_dir)),
        options,
        {"classes": classes},
    )
    if splits.skipped:  # what --skip-bad-images left must still make every class
        for folders, labels, fewest in (
            (train_classes, splits.train_labels, TRAIN_FEWEST),
            (test_classes, splits.test_labels, 1),
        ):
            counts = torch.bincount(labels, minlength=len(classes)).tolist()
            for name, count in zip(classes, counts, strict=True):
                _check_class_size(folders[name], count, fewest, after_skip=True)
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
