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


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # CI has 2 cores; keep torch from oversubscribing when pytest runs subprocesses too.
    torch.set_num_threads(2)
