"""What the dataset readers share: the advice their errors end with, and the label check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selmatch.data.dataset import BadDatasetError

COPY_AGAIN = "copy it again"


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, name: str) -> None:
    """Every label in ``0..num_classes-1``: one out of range would pass evaluation and crash
    the experts' training later."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise BadDatasetError(
            f"{path}: label {int(labels[bad[0]])} (record {int(bad[0])}) is outside "
            f"0..{num_classes - 1} ({name} has {num_classes} classes); {COPY_AGAIN}"
        )
