"""The readers on small files made here, in each dataset's real on-disk format."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from selmatch.core.config import ConfigError
from selmatch.data import BadImageError, DatasetNotFoundError, load_dataset
from selmatch.data.cifar import _NumpyOnlyUnpickler


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write_png(path, size=(12, 12), mode="RGB", value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def test_image_folder_reads_classes_and_splits(tmp_path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", value=i)
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ("cat", "dog")
    assert data.train_images.shape == (6, 3, 12, 12)
    assert data.test_labels.tolist() == [0, 0, 1, 1]
    assert len(data.mean) == 3
    again = load_dataset(f"imagefolder:{tmp_path}")  # second load comes from the cache
    assert torch.equal(again.train_images, data.train_images)


def test_image_folder_mixed_sizes_need_image_size(tmp_path) -> None:
    for i in range(2):
        write_png(tmp_path / "train" / "a" / f"{i}.png", size=(12, 12))
        write_png(tmp_path / "train" / "b" / f"{i}.png", size=(20, 16), mode="L")
    for name in ("a", "b"):
        write_png(tmp_path / "test" / name / "0.png")
    with pytest.raises(ConfigError, match="differ in size: .*b/0.png is 20x16.*--image-size"):
        load_dataset(f"imagefolder:{tmp_path}")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    # mostly colour: the grayscale ones are promoted to RGB
    assert data.train_images.shape == (4, 3, 8, 8) and data.test_images.shape == (2, 3, 8, 8)


def test_image_folder_missing_layout_says_what_it_needs(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="needs .*train.*val"):
        load_dataset(f"imagefolder:{tmp_path}")


def _folder_with_a_truncated_image(root):
    for split, count in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_png(root / split / name / f"{i}.png", value=i)
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def test_a_truncated_image_is_an_error_naming_it_unless_skipped(tmp_path) -> None:
    bad = _folder_with_a_truncated_image(tmp_path)
    with pytest.raises(BadImageError, match=f"cannot read image {bad}: .*--skip-bad-images"):
        load_dataset(f"imagefolder:{tmp_path}")
    data = load_dataset(f"imagefolder:{tmp_path}", skip_bad_images=True)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1]  # the labels follow the kept files
    assert data.test_labels.tolist() == [0, 0, 1, 1]
    assert len(data.skipped_files) == 1 and data.skipped_files[0].startswith(f"{bad}: ")
    again = load_dataset(f"imagefolder:{tmp_path}", skip_bad_images=True)  # from the cache
    assert torch.equal(again.train_images, data.train_images)
    assert again.skipped_files == data.skipped_files
    with pytest.raises(BadImageError, match=str(bad)):  # the cache does not hide the bad file
        load_dataset(f"imagefolder:{tmp_path}")


def test_not_an_image_or_nothing_readable_is_a_clear_error(tmp_path) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png")
    for name in ("cat", "dog"):
        (tmp_path / "val" / name / "0.png").write_text("not an image")
    with pytest.raises(BadImageError, match="cat/0.png: not an image file Pillow can identify"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(DatasetNotFoundError, match="no readable image files in .*2 skipped"):
        load_dataset(f"imagefolder:{tmp_path}", skip_bad_images=True)


def test_a_damaged_cache_entry_is_built_again(tmp_path) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_png(tmp_path / "data" / split / name / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}")
    (entry,) = (tmp_path / "home" / ".cache" / "selmatch").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    again = load_dataset(f"imagefolder:{tmp_path / 'data'}")
    assert torch.equal(again.train_images, data.train_images)


def _cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n)


def test_cifar10_binary_format(tmp_path) -> None:
    base = tmp_path / "cifar-10-batches-bin"
    base.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        pixels, labels = _cifar_arrays(4, 10, len(name))
        np.concatenate([labels[:, None].astype(np.uint8), pixels], 1).tofile(base / name)
    (base / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    data = load_dataset("cifar10", data_root=tmp_path)
    assert data.train_images.shape == (20, 3, 32, 32) and data.num_classes == 10
    pixels, labels = _cifar_arrays(4, 10, len("test_batch.bin"))
    assert torch.equal(data.test_images.flatten(1), torch.from_numpy(pixels))
    assert data.test_labels.tolist() == labels.tolist()


def test_cifar100_python_format_uses_fine_labels(tmp_path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name in ("train", "test"):
        pixels, labels = _cifar_arrays(6, 100, len(name))
        batch = {b"data": pixels, b"fine_labels": labels.tolist(), b"coarse_labels": [0] * 6}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    (base / "meta").write_bytes(pickle.dumps(names, protocol=2))
    data = load_dataset("cifar100", data_root=tmp_path)
    assert data.num_classes == 100 and data.class_names[7] == "c7"
    assert data.train_labels.tolist() == _cifar_arrays(6, 100, len("train"))[1].tolist()


def test_cifar_unpickler_refuses_anything_but_arrays() -> None:
    payload = pickle.dumps({b"data": __import__("collections").OrderedDict()})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _NumpyOnlyUnpickler(__import__("io").BytesIO(payload)).load()


def test_tiny_imagenet_layout(tmp_path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids))
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\n")
    for w in wnids:
        for i in range(2):
            write_png(base / "train" / w / "images" / f"{w}_{i}.JPEG", size=(8, 8), value=i)
    for i in range(3):
        write_png(base / "val" / "images" / f"val_{i}.JPEG", size=(8, 8), value=10 + i)
    lines = [f"val_{i}.JPEG\t{w}\t0\t0\t8\t8" for i, w in enumerate(["n02", "n01", "n02"])]
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines))
    data = load_dataset("tiny-imagenet", data_root=tmp_path)
    assert data.class_names == ("goldfish", "salamander")
    assert data.train_labels.tolist() == [0, 0, 1, 1]
    assert data.test_labels.tolist() == [1, 0, 1]
    assert data.image_shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cifar10", "cifar10 needs --data-root"),
        ("tiny-imagenet", "tiny-imagenet needs --data-root"),
        ("mnist-digits", "--dataset must be one of fashion-mnist, cifar10"),
    ],
)
def test_missing_or_unknown_datasets_say_how_to_get_them(name, message) -> None:
    with pytest.raises((DatasetNotFoundError, ConfigError), match=message):
        load_dataset(name)


def test_cifar_not_under_root_mentions_download(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="--download"):
        load_dataset("cifar100", data_root=tmp_path)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch) -> None:
    from selmatch.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_root=tmp_path)
