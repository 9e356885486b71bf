"""Every data file is checked at load: a bad one is one error naming it (issue 35, part 3).

Each test writes a small valid dataset in its real on-disk format, damages one thing and
checks the message; the valid ones load.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selmatch.core.config import ConfigError
from selmatch.data import (
    BadDatasetError,
    DatasetNotFoundError,
    holdout_split,
    load_dataset,
    readers,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SELMATCH_DATA_ROOT", raising=False)


# --------------------------------------------------------------------------- Fashion-MNIST
def idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fashion_files() -> dict[str, bytes]:
    """Uncompressed IDX files: 3 train / 2 test images a class."""
    files = {}
    for prefix, per_class in (("train", 3), ("t10k", 2)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.random.default_rng(0).integers(0, 255, (len(labels), 28, 28))
        files[f"{prefix}-images-idx3-ubyte.gz"] = idx(readers.IDX_IMAGES, images)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = idx(readers.IDX_LABELS, labels)
    return files


def write_fashion(root: Path, **replaced: bytes) -> Path:
    """The four files gzipped under ``root``; ``replaced`` (name with ``_`` for ``-``, no
    suffix) gives one's uncompressed bytes instead."""
    root.mkdir(parents=True, exist_ok=True)
    for name, raw in fashion_files().items():
        raw = replaced.get(name.removesuffix(".gz").replace("-", "_"), raw)
        (root / name).write_bytes(gzip.compress(raw, mtime=0))
    return root


def test_small_valid_fashion_mnist_loads_from_data_root(tmp_path) -> None:
    data = load_dataset("fashion-mnist", data_root=write_fashion(tmp_path / "fm"))
    assert data.train_images.shape == (30, 1, 28, 28) and len(data.test_labels) == 20


def test_idx_truncated_gzip(tmp_path) -> None:
    path = write_fashion(tmp_path) / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadDatasetError, match=f"^{path} is truncated .*copy it again$"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_not_gzip(tmp_path) -> None:
    path = write_fashion(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(fashion_files()["t10k-labels-idx1-ubyte.gz"])
    with pytest.raises(BadDatasetError, match=f"^{path} is not gzip-compressed"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_damaged_gzip(tmp_path) -> None:
    path = write_fashion(tmp_path) / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(BadDatasetError, match=f"^{path} is damaged"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_wrong_magic(tmp_path) -> None:
    images = fashion_files()["train-images-idx3-ubyte.gz"]
    write_fashion(tmp_path, train_labels_idx1_ubyte=images)
    with pytest.raises(BadDatasetError, match=r"train-labels.* is not an IDX file of labels "):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_header_cut_short(tmp_path) -> None:
    images = fashion_files()["t10k-images-idx3-ubyte.gz"]
    write_fashion(tmp_path, t10k_images_idx3_ubyte=images[:10])
    with pytest.raises(BadDatasetError, match="t10k-images.* ends inside its IDX header"):
        load_dataset("fashion-mnist", data_root=tmp_path)


@pytest.mark.parametrize("change", [-784, 5])
def test_idx_byte_length_differs_from_header(tmp_path, change) -> None:
    images = fashion_files()["t10k-images-idx3-ubyte.gz"]
    images = images[:change] if change < 0 else images + bytes(change)
    write_fashion(tmp_path, t10k_images_idx3_ubyte=images)
    with pytest.raises(BadDatasetError, match=r"t10k-images.* header \(20 x 28 x 28\) says 15,680"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_images_and_labels_counts_differ(tmp_path) -> None:
    write_fashion(tmp_path, t10k_labels_idx1_ubyte=idx(0x0801, np.zeros(19)))
    with pytest.raises(BadDatasetError, match="20 images and .*t10k-labels.* 19 labels"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_label_out_of_range(tmp_path) -> None:
    labels = np.repeat(np.arange(10), 3)
    labels[7] = 12
    write_fashion(tmp_path, train_labels_idx1_ubyte=idx(0x0801, labels))
    with pytest.raises(BadDatasetError, match=r"label 12 \(record 7\) is outside 0..9"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_idx_one_file_missing(tmp_path) -> None:
    (write_fashion(tmp_path) / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", data_root=tmp_path)


# --------------------------------------------------------------------------- the data root
def test_data_root_that_does_not_exist_is_an_error_not_the_system_copy(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match=f"^--data-root {tmp_path}/no does not exist"):
        load_dataset("fashion-mnist", data_root=tmp_path / "no")


def test_data_root_that_is_a_file(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="--data-root .*/f is not a folder"):
        load_dataset("cifar10", data_root=tmp_path / "f")


def test_data_root_from_the_environment_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SELMATCH_DATA_ROOT", str(tmp_path / "no"))
    with pytest.raises(DatasetNotFoundError, match=r"/no \(from \$SELMATCH_DATA_ROOT\) does not"):
        load_dataset("fashion-mnist")


def test_data_root_without_the_files_does_not_fall_back(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="not found under --data-root .*system copy"):
        load_dataset("fashion-mnist", data_root=tmp_path)


def test_a_missing_data_root_may_be_made_by_download(tmp_path, monkeypatch) -> None:
    from torchvision import datasets

    def fake(root: str, **kwargs: object) -> None:
        raise RuntimeError(f"would download into {root}")

    monkeypatch.setattr(datasets, "CIFAR10", fake)
    with pytest.raises(RuntimeError, match="would download"):
        load_dataset("cifar10", data_root=tmp_path / "new", download=True)


# --------------------------------------------------------------------------- CIFAR
def cifar_bin(root: Path, per_batch: int = 2) -> Path:
    base = root / "cifar-10-batches-bin"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.zeros((per_batch, 3073), dtype=np.uint8)
        records[:, 0] = np.arange(per_batch) % 10
        records.tofile(base / name)
    (base / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return base


def cifar_py(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(base / name, np.zeros((2, 3072), dtype=np.uint8), [0, 1])
    names = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    return base


def write_batch(path: Path, data: object, labels: object) -> None:
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))


def test_cifar_binary_batch_of_a_wrong_size(tmp_path) -> None:
    path = cifar_bin(tmp_path) / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadDatasetError, match=f"^{path} holds 6,046 bytes, not a whole number"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_binary_empty_batch(tmp_path) -> None:
    (cifar_bin(tmp_path) / "test_batch.bin").write_bytes(b"")
    with pytest.raises(BadDatasetError, match="test_batch.bin holds 0 bytes"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_binary_label_out_of_range(tmp_path) -> None:
    path = cifar_bin(tmp_path) / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 10
    path.write_bytes(bytes(raw))
    with pytest.raises(BadDatasetError, match=r"test_batch.bin: label 10 \(record 1\)"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_file_missing(tmp_path) -> None:
    (cifar_bin(tmp_path) / "data_batch_5.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-bin lacks data_batch_5.bin"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_class_names_of_the_wrong_count(tmp_path) -> None:
    (cifar_bin(tmp_path) / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(BadDatasetError, match="batches.meta.txt lists 2 class names; cifar10 has"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_python_truncated_batch(tmp_path) -> None:
    path = cifar_py(tmp_path) / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BadDatasetError, match=f"^{path} is not a readable CIFAR python file"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_python_batch_without_labels(tmp_path) -> None:
    path = cifar_py(tmp_path) / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8)}, protocol=2))
    with pytest.raises(BadDatasetError, match="data_batch_1 lacks labels"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_python_rows_of_the_wrong_size(tmp_path) -> None:
    write_batch(cifar_py(tmp_path) / "data_batch_1", np.zeros((2, 1024), dtype=np.uint8), [0, 1])
    with pytest.raises(BadDatasetError, match=r"data is uint8 of shape \(2, 1024\)"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_python_counts_differ(tmp_path) -> None:
    write_batch(cifar_py(tmp_path) / "test_batch", np.zeros((2, 3072), dtype=np.uint8), [0])
    with pytest.raises(BadDatasetError, match="test_batch holds 2 images but 1 labels"):
        load_dataset("cifar10", data_root=tmp_path)


def test_cifar_python_label_out_of_range(tmp_path) -> None:
    write_batch(cifar_py(tmp_path) / "test_batch", np.zeros((2, 3072), dtype=np.uint8), [0, -1])
    with pytest.raises(BadDatasetError, match=r"label -1 \(record 1\) is outside 0..9"):
        load_dataset("cifar10", data_root=tmp_path)


# --------------------------------------------------------------------------- image folders
def png(path: Path, value: int = 0, mode: str = "L", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value * 20, dtype=np.uint8), mode).save(path)


def folder(root: Path, classes: tuple[str, ...] = ("a", "b"), test: str = "val") -> str:
    for split, count in (("train", 3), (test, 2)):
        for name in classes:
            for i in range(count):
                png(root / split / name / f"{i}.png", i)
    return f"imagefolder:{root}"


def test_an_empty_class_folder(tmp_path) -> None:
    name = folder(tmp_path)
    (tmp_path / "train" / "c").mkdir()
    png(tmp_path / "val" / "c" / "0.png")
    with pytest.raises(BadDatasetError, match=f"class folder {tmp_path}/train/c holds no image"):
        load_dataset(name)


def test_an_empty_test_class_folder(tmp_path) -> None:
    name = folder(tmp_path)
    for path in (tmp_path / "val" / "b").iterdir():
        path.unlink()
    with pytest.raises(BadDatasetError, match="val/b holds no image files; .* at least 1 "):
        load_dataset(name)


def test_a_class_of_a_single_image(tmp_path) -> None:
    name = folder(tmp_path)
    for i in (1, 2):
        (tmp_path / "train" / "b" / f"{i}.png").unlink()
    with pytest.raises(BadDatasetError, match="train/b holds a single image; .* at least 2 "):
        load_dataset(name)


def test_skip_bad_images_leaving_a_class_too_small(tmp_path) -> None:
    name = folder(tmp_path)
    for i in (1, 2):
        (tmp_path / "train" / "b" / f"{i}.png").write_text("not an image")
    with pytest.raises(BadDatasetError, match="train/b keeps 1 image.* --skip-bad-images"):
        load_dataset(name, skip_bad_images=True)


@pytest.mark.parametrize("image_size", [None, 8])
def test_a_colour_image_among_grayscale_ones(tmp_path, image_size) -> None:
    name = folder(tmp_path)
    png(tmp_path / "val" / "b" / "1.png", mode="RGB")
    message = f"{tmp_path}/val/b/1.png is a colour image among 9 grayscale ones .*train/a/0.png"
    with pytest.raises(BadDatasetError, match=message):
        load_dataset(name, image_size=image_size)


def test_grayscale_images_among_mostly_colour_ones_are_promoted(tmp_path) -> None:
    name = folder(tmp_path)
    for path in sorted(tmp_path.rglob("*.png"))[1:]:
        png(path, mode="RGB")
    data = load_dataset(name)
    assert data.channels == 3 and data.test_images.shape[1] == 3


def test_a_class_only_in_val(tmp_path) -> None:
    name = folder(tmp_path)
    png(tmp_path / "val" / "c" / "0.png")
    with pytest.raises(BadDatasetError, match="val/c has no .*/train/c; every class needs"):
        load_dataset(name)


def test_a_class_only_in_train(tmp_path) -> None:
    name = folder(tmp_path, test="test")
    for i in range(2):
        png(tmp_path / "train" / "c" / f"{i}.png")
        png(tmp_path / "train" / "d" / f"{i}.png")
    with pytest.raises(BadDatasetError, match=r"train/c has no .*/test/c \(nor do 1 more\)"):
        load_dataset(name)


def test_images_in_a_sub_folder_of_a_class(tmp_path) -> None:
    name = folder(tmp_path)
    png(tmp_path / "train" / "a" / "more" / "0.png")
    with pytest.raises(BadDatasetError, match="train/a/more is a folder inside the class folder"):
        load_dataset(name)


def test_an_image_outside_the_class_folders(tmp_path) -> None:
    name = folder(tmp_path)
    png(tmp_path / "val" / "0.png")
    with pytest.raises(BadDatasetError, match="val/0.png lies outside the class folders"):
        load_dataset(name)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path) -> None:
    name = folder(tmp_path)
    os.mkfifo(tmp_path / "train" / "a" / "3.png")
    with pytest.raises(BadDatasetError, match="train/a/3.png is not a regular file"):
        load_dataset(name)


def test_a_broken_symbolic_link(tmp_path) -> None:
    name = folder(tmp_path)
    (tmp_path / "train" / "b" / "3.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(BadDatasetError, match="train/b/3.png is a broken symbolic link"):
        load_dataset(name)


def test_a_folder_named_like_an_image(tmp_path) -> None:
    name = folder(tmp_path)
    (tmp_path / "val" / "a" / "x.png").mkdir()
    with pytest.raises(BadDatasetError, match="val/a/x.png is a folder, not an image file"):
        load_dataset(name)


def test_hidden_entries_and_other_files_are_passed_over(tmp_path) -> None:
    name = folder(tmp_path)
    (tmp_path / "train" / "a" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".DS_Store").write_text("x")
    (tmp_path / "val" / "a" / "notes.txt").write_text("x")
    data = load_dataset(name)
    assert data.class_names == ("a", "b") and len(data.train_labels) == 6


def test_images_of_different_sizes_name_both(tmp_path) -> None:
    name = folder(tmp_path)
    png(tmp_path / "val" / "a" / "0.png", size=10)
    with pytest.raises(ConfigError, match=r"val/a/0.png is 10x10, .*train/a/0.png is 8x8; pass"):
        load_dataset(name)
    assert load_dataset(name, image_size=8).test_images.shape == (4, 1, 8, 8)


# --------------------------------------------------------------------------- Tiny ImageNet
def tiny(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("n01\nn02\n")
    for wnid in ("n01", "n02"):
        for i in range(2):
            png(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", i, "RGB")
    lines = []
    for i, wnid in enumerate(("n02", "n01")):
        png(base / "val" / "images" / f"val_{i}.JPEG", i, "RGB")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t8\t8")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_valid(tmp_path) -> None:
    tiny(tmp_path)
    data = load_dataset("tiny-imagenet", data_root=tmp_path)
    assert data.test_labels.tolist() == [1, 0]


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path) -> None:
    annotations = tiny(tmp_path) / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn01\nval_1.JPEG\tn99\n")
    with pytest.raises(BadDatasetError, match="val_annotations.txt line 2: n99 is not in wnids"):
        load_dataset("tiny-imagenet", data_root=tmp_path)


def test_tiny_imagenet_listed_image_missing(tmp_path) -> None:
    (tiny(tmp_path) / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_1.JPEG, listed in .* line 2, does not"):
        load_dataset("tiny-imagenet", data_root=tmp_path)


def test_tiny_imagenet_class_folder_missing(tmp_path) -> None:
    (tiny(tmp_path) / "wnids.txt").write_text("n01\nn02\nn03\n")
    with pytest.raises(DatasetNotFoundError, match="train/n03/images is missing"):
        load_dataset("tiny-imagenet", data_root=tmp_path)


def test_tiny_imagenet_repeated_wnid(tmp_path) -> None:
    (tiny(tmp_path) / "wnids.txt").write_text("n01\nn02\nn01\n")
    with pytest.raises(BadDatasetError, match="wnids.txt lists n01 more than once"):
        load_dataset("tiny-imagenet", data_root=tmp_path)


# --------------------------------------------------------------------------- the hold-out
def test_holdout_of_a_class_too_small_says_so_without_dividing_by_zero() -> None:
    labels = torch.tensor([0, 0, 0, 2, 2, 2])  # class 1 is absent
    with pytest.raises(ConfigError, match="class 1 has 0 training image.*--val-fraction 0"):
        holdout_split(labels, 3)
    assert len(holdout_split(labels, 3, val_fraction=0).pool) == 6
