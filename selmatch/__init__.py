"""selmatch: dataset distillation by difficulty-aware selection and partial trajectory matching.

The library is PyTorch only; the distributed search lives in ``tune/``.
"""

__version__ = "0.1.0"

from selmatch._moved import install as _install_moved
from selmatch.core.config import ConfigError, SelmatchError
from selmatch.data import (
    DatasetNotFoundError,
    ImageDataset,
    balanced_subset,
    holdout_split,
    load_dataset,
)
from selmatch.evaluation.evaluate import EvalConfig, EvalResult, evaluate_set, paper_epochs
from selmatch.sets.export import load_synthetic
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.augment import DSAConfig, apply_dsa, combined, crop_flip, dsa, sample_dsa
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import TrainConfig, accuracy, train_network

_install_moved()  # the module paths before the layout by stage still import

__all__ = [
    "ConfigError",
    "DSAConfig",
    "DatasetNotFoundError",
    "EvalConfig",
    "EvalResult",
    "ImageDataset",
    "ModelConfig",
    "SelmatchError",
    "SyntheticSet",
    "TrainConfig",
    "__version__",
    "accuracy",
    "apply_dsa",
    "balanced_subset",
    "build_model",
    "combined",
    "crop_flip",
    "dsa",
    "evaluate_set",
    "holdout_split",
    "load_dataset",
    "load_synthetic",
    "paper_epochs",
    "sample_dsa",
    "train_network",
]
