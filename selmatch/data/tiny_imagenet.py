"""Tiny ImageNet (200 classes of 64x64 JPEGs) from ``--data-root``; its ``val`` split is the
test set."""

from __future__ import annotations

from pathlib import Path

from selmatch.data._shared import COPY_AGAIN
from selmatch.data.dataset import (
    BadDatasetError,
    DataOptions,
    DatasetNotFoundError,
    ImageDataset,
    register_dataset,
)
from selmatch.data.image_folder import TRAIN_FEWEST, _check_regular, _folder_split, _read_splits

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _tiny_wnids(path: Path) -> list[str]:
    """The class ids, one a line, each once."""
    wnids = path.read_text().split()
    twice = sorted({w for w in wnids if wnids.count(w) > 1})
    if not wnids or twice:
        what = f"{twice[0]} more than once" if twice else "no class"
        raise BadDatasetError(f"{path} lists {what}; {COPY_AGAIN}")
    return wnids


def _tiny_val(val: Path, labels: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The validation images (the test set) and their labels, from ``val_annotations.txt``
    (``FILE<TAB>WNID<TAB>box``), sorted by file name."""
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetNotFoundError(f"{annotations} is missing; copy the dataset again")
    pairs = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in labels:
            what = f"{fields[1]} is not in wnids.txt" if len(fields) > 1 else "no tab"
            raise BadDatasetError(f"{annotations} line {number}: {what}; {COPY_AGAIN}")
        image = val / "images" / fields[0]
        if not image.exists() and not image.is_symlink():
            raise DatasetNotFoundError(
                f"{image}, listed in {annotations} line {number}, does not exist; {COPY_AGAIN}"
            )
        _check_regular(image)
        pairs.append((image, labels[fields[1]]))
    pairs.sort()
    return [image for image, _ in pairs], [label for _, label in pairs]


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
    wnids = _tiny_wnids(base / "wnids.txt")
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    folders = [base / "train" / wnid / "images" for wnid in wnids]
    missing = [folder for folder in folders if not folder.is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"{missing[0]} is missing ({len(missing)} of the {len(wnids)} classes of wnids.txt "
            "lack theirs); copy the dataset again"
        )
    train_files, train_labels = _folder_split(folders, TRAIN_FEWEST)
    test_files, test_labels = _tiny_val(base / "val", {w: i for i, w in enumerate(wnids)})
    splits = _read_splits(
        (train_files, train_labels, f"{base}/train"),
        (test_files, test_labels, f"{base}/val"),
        options,
        {},
    )
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
