"""Shared fixtures: the real Fashion-MNIST, loaded once per test session."""

from __future__ import annotations

import pytest
import torch

from selmatch.data import HoldoutSplit, ImageDataset, holdout_split, load_dataset


@pytest.fixture(scope="session")
def fashion() -> ImageDataset:
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def fashion_split(fashion: ImageDataset) -> HoldoutSplit:
    return holdout_split(fashion.train_labels, fashion.num_classes)


#: Fixtures that make a test slow whatever it asserts: a Ray instance, a search, two nodes.
SLOW_FIXTURES = {"local_ray", "smoke_search", "smoke_run", "gpu_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs Ray or a search is in the slow tier (``make test-slow``; CI runs both
    tiers), marked here rather than one by one; the others mark themselves."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # CI has 2 cores; keep torch from oversubscribing when pytest runs subprocesses too.
    torch.set_num_threads(2)


def write_image_folder(root, dataset: ImageDataset, train: int, test: int):
    """An ImageFolder of real Fashion-MNIST images as a user's own data would come:
    ``root/train/<class>/*.png`` (``train`` per class) and ``root/test/<class>/`` (``test``)."""
    from PIL import Image

    for split, labels, images, count in (
        ("train", dataset.train_labels, dataset.train_images, train),
        ("test", dataset.test_labels, dataset.test_images, test),
    ):
        for c in range(dataset.num_classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i, index in enumerate(torch.nonzero(labels == c).flatten()[:count].tolist()):
                Image.fromarray(images[index, 0].numpy(), mode="L").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def own_folder(fashion: ImageDataset, tmp_path_factory) -> str:
    """10 classes of 150 training and 20 test images: a small dataset of one's own."""
    root = write_image_folder(tmp_path_factory.mktemp("own") / "data", fashion, 150, 20)
    return f"imagefolder:{root}"
