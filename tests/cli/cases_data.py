"""Bad data files: every file a dataset loader reads is checked, and a bad one is one line
naming it (issue 35, part 3).

The inputs (``build``): ``data-idx-*/`` hold small Fashion-MNIST roots (30 train / 20 test
images, 28x28) with one file damaged each: the gzip cut in half, not compressed, a byte length
other than its header says, the wrong magic number (a labels file holding images), a label 10,
fewer test labels than images; ``data-no-idx/`` is a folder without them, ``data-root-file`` a
file. ``data-if-*/`` are image folders (classes ``a`` and ``b``, 3 train / 2 test images of
8x8 grayscale each) with one flaw each: an empty class folder, a single-image class, one colour
image among grayscale ones, a class only in ``test/`` or only in ``train/``, a sub-folder, a
FIFO, a broken link or a folder named like an image in a class folder, an image outside the
class folders. ``data-cifar-*/`` are CIFAR-10 roots (2 images a batch): a binary batch cut
short, a binary batch missing, a python batch with label 10, a python batch cut short.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SEARCH = "python tune/search_alpha_beta.py"
EVAL = "selmatch evaluate --ipc 1"

# fmt: off
CASES = [
    # Fashion-MNIST files under --data-root
    (f"{EVAL} --data-root data-idx-truncated", "data-idx-truncated/train-images-idx3-ubyte.gz",
     True),
    (f"{EVAL} --data-root data-idx-not-gzip", "data-idx-not-gzip/t10k-labels-idx1-ubyte.gz"),
    (f"{EVAL} --data-root data-idx-wrong-length",
     "data-idx-wrong-length/t10k-images-idx3-ubyte.gz"),
    (f"{EVAL} --data-root data-idx-bad-magic", "data-idx-bad-magic/train-labels-idx1-ubyte.gz"),
    (f"{EVAL} --data-root data-idx-label-10", "data-idx-label-10/train-labels-idx1-ubyte.gz"),
    (f"{EVAL} --data-root data-idx-count-mismatch",
     "data-idx-count-mismatch/t10k-labels-idx1-ubyte.gz"),
    ("selmatch experts --data-root data-idx-label-10",
     "data-idx-label-10/train-labels-idx1-ubyte.gz"),
    ("selmatch experts --data-root data-idx-truncated",
     "data-idx-truncated/train-images-idx3-ubyte.gz"),
    # the data root itself: never replaced by the system copy
    (f"{EVAL} --data-root data-missing", "--data-root data-missing"),
    (f"{EVAL} --data-root data-root-file", "--data-root data-root-file"),
    (f"{EVAL} --data-root data-no-idx", "--data-root data-no-idx"),
    # image folders
    (f"{EVAL} --dataset imagefolder:data-if-empty-class", "data-if-empty-class/train/c"),
    (f"{SEARCH} --dataset imagefolder:data-if-empty-class --dry-run",
     "data-if-empty-class/train/c"),
    (f"{EVAL} --dataset imagefolder:data-if-single-image", "data-if-single-image/train/b"),
    (f"{EVAL} --dataset imagefolder:data-if-one-rgb", "data-if-one-rgb/train/b/2.png"),
    (f"{EVAL} --dataset imagefolder:data-if-one-rgb --image-size 8",
     "data-if-one-rgb/train/b/2.png"),
    (f"{EVAL} --dataset imagefolder:data-if-val-only-class", "data-if-val-only-class/test/c"),
    (f"{EVAL} --dataset imagefolder:data-if-train-only-class",
     "data-if-train-only-class/train/c"),
    (f"{EVAL} --dataset imagefolder:data-if-nested", "data-if-nested/train/a/more"),
    (f"{EVAL} --dataset imagefolder:data-if-fifo", "data-if-fifo/train/a/3.png", True),
    (f"{EVAL} --dataset imagefolder:data-if-broken-link", "data-if-broken-link/train/b/3.png"),
    (f"{EVAL} --dataset imagefolder:data-if-folder-png", "data-if-folder-png/test/a/x.png"),
    (f"{EVAL} --dataset imagefolder:data-if-loose-image", "data-if-loose-image/train/0.png"),
    # CIFAR-10
    (f"{EVAL} --dataset cifar10 --data-root data-cifar-bin-truncated",
     "data-cifar-bin-truncated/cifar-10-batches-bin/data_batch_3.bin"),
    (f"{EVAL} --dataset cifar10 --data-root data-cifar-bin-missing",
     "data-cifar-bin-missing/cifar-10-batches-bin"),
    (f"{EVAL} --dataset cifar10 --data-root data-cifar-py-label",
     "data-cifar-py-label/cifar-10-batches-py/test_batch"),
    (f"{EVAL} --dataset cifar10 --data-root data-cifar-py-truncated",
     "data-cifar-py-truncated/cifar-10-batches-py/data_batch_2"),
]
# fmt: on


# --------------------------------------------------------------------------- Fashion-MNIST
def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _gz(path: Path, raw: bytes) -> None:
    path.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))


def _fashion_root(folder: Path) -> dict[str, bytes]:
    """A valid root (3 train / 2 test images a class); returns the uncompressed files."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {}
    for prefix, per_class in (("train", 3), ("t10k", 2)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 255, (len(labels), 28, 28), dtype=np.uint8)
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx_bytes(0x0803, images)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_bytes(0x0801, labels)
    for name, raw in files.items():
        _gz(folder / name, raw)
    return files


def _build_fashion(root: Path) -> None:
    files = _fashion_root(root / "data-idx-truncated")
    path = root / "data-idx-truncated" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _fashion_root(root / "data-idx-not-gzip")
    (root / "data-idx-not-gzip" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        files["t10k-labels-idx1-ubyte.gz"]
    )
    _fashion_root(root / "data-idx-wrong-length")
    _gz(
        root / "data-idx-wrong-length" / "t10k-images-idx3-ubyte.gz",
        files["t10k-images-idx3-ubyte.gz"][:-784],
    )
    _fashion_root(root / "data-idx-bad-magic")
    _gz(
        root / "data-idx-bad-magic" / "train-labels-idx1-ubyte.gz",
        files["train-images-idx3-ubyte.gz"],
    )
    _fashion_root(root / "data-idx-label-10")
    labels = np.repeat(np.arange(10), 3)
    labels[4] = 10
    _gz(root / "data-idx-label-10" / "train-labels-idx1-ubyte.gz", _idx_bytes(0x0801, labels))
    _fashion_root(root / "data-idx-count-mismatch")
    _gz(
        root / "data-idx-count-mismatch" / "t10k-labels-idx1-ubyte.gz",
        _idx_bytes(0x0801, np.repeat(np.arange(10), 2)[:19]),
    )
    (root / "data-no-idx").mkdir()
    (root / "data-no-idx" / "README").write_text("no Fashion-MNIST files here\n")
    (root / "data-root-file").write_text("a file, not a folder\n")


# --------------------------------------------------------------------------- image folders
def _png(path: Path, value: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value * 20, dtype=np.uint8), mode).save(path)


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for split, count in (("train", 3), ("test", 2)):
        for name in classes:
            for i in range(count):
                _png(root / split / name / f"{i}.png", i)
    return root


def _build_folders(root: Path) -> None:
    (_folder(root / "data-if-empty-class") / "train" / "c").mkdir()
    _png(root / "data-if-empty-class" / "test" / "c" / "0.png", 0)
    _folder(root / "data-if-single-image")
    for extra in ("1.png", "2.png"):
        (root / "data-if-single-image" / "train" / "b" / extra).unlink()
    _png(_folder(root / "data-if-one-rgb") / "train" / "b" / "2.png", 2, mode="RGB")
    _png(_folder(root / "data-if-val-only-class") / "test" / "c" / "0.png", 0)
    _png(_folder(root / "data-if-train-only-class") / "train" / "c" / "0.png", 0)
    _png(root / "data-if-train-only-class" / "train" / "c" / "1.png", 1)
    _png(_folder(root / "data-if-nested") / "train" / "a" / "more" / "0.png", 0)
    os.mkfifo(_folder(root / "data-if-fifo") / "train" / "a" / "3.png")
    (_folder(root / "data-if-broken-link") / "train" / "b" / "3.png").symlink_to("missing.png")
    (_folder(root / "data-if-folder-png") / "test" / "a" / "x.png").mkdir()
    _png(_folder(root / "data-if-loose-image") / "train" / "0.png", 0)


# --------------------------------------------------------------------------- CIFAR-10
def _cifar_bin(base: Path) -> None:
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.zeros((2, 3073), dtype=np.uint8)
        records[:, 0] = [0, 1]
        records.tofile(base / name)
    (base / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")


def _cifar_py(base: Path) -> None:
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))


def _build_cifar(root: Path) -> None:
    _cifar_bin(root / "data-cifar-bin-truncated" / "cifar-10-batches-bin")
    path = root / "data-cifar-bin-truncated" / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    _cifar_bin(root / "data-cifar-bin-missing" / "cifar-10-batches-bin")
    (root / "data-cifar-bin-missing" / "cifar-10-batches-bin" / "data_batch_5.bin").unlink()
    _cifar_py(root / "data-cifar-py-label" / "cifar-10-batches-py")
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]}
    (root / "data-cifar-py-label" / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps(batch, protocol=2)
    )
    _cifar_py(root / "data-cifar-py-truncated" / "cifar-10-batches-py")
    path = root / "data-cifar-py-truncated" / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])


def build(root: Path) -> None:
    _build_fashion(root)
    _build_folders(root)
    _build_cifar(root)
