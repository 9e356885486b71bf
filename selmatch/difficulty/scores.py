"""Per-sample difficulty scores: Forgetting, EL2N, and imported ones (e.g. C-scores).

Scores are float64 vectors aligned with the dataset's training index; samples that were not
scored (the validation slice, or samples left out of expert training) are NaN. Every kind has
a *direction* (:mod:`selmatch.difficulty.score_kinds`, the registry of the kinds): for
``forgetting`` and
``el2n`` a higher score is harder; for ``cscore`` (the consistency score, published for CIFAR)
a *lower* score is harder. :func:`hardness` turns any
score into "higher is harder" so that nothing downstream needs to know the direction — getting
this direction wrong is the most reported selection bug of this field, hence a contract test.

- **Forgetting** (Toneva et al., 2019): the number of times a sample goes from correctly to
  wrongly classified between successive presentations in training. Samples never classified
  correctly count as most forgotten: they get ``presentations`` (more than any sample that was
  learned can reach). Averaged over experts.
- **EL2N** (Paul et al., 2021): ``‖softmax(f(x)) − onehot(y)‖₂`` of a network early in training,
  averaged over experts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from selmatch.core.config import ConfigError, SelmatchError
from selmatch.core.io import atomic_write, read_json, read_safetensors, write_json
from selmatch.difficulty.score_kinds import REGISTRY

if TYPE_CHECKING:
    from selmatch.data import ImageDataset

#: Registered score kinds and whether a *higher* value means a *harder* sample
#: (:mod:`selmatch.difficulty.score_kinds`).
HIGHER_IS_HARDER: dict[str, bool] = {s.name: s.higher_is_harder for s in REGISTRY.values()}
SCORES_FILE = "scores.safetensors"
SCORES_MANIFEST = "scores.json"


class ForgettingTracker:
    """Counts forgetting events online from each mini-batch's predictions.

    ``update`` takes the training indices of a batch and whether each was classified
    correctly at that presentation; no extra pass over the data is needed.
    """

    def __init__(self, num_samples: int) -> None:
        self.previous = torch.zeros(num_samples, dtype=torch.bool)
        self.forgotten = torch.zeros(num_samples, dtype=torch.int64)
        self.learned = torch.zeros(num_samples, dtype=torch.bool)
        self.presentations = torch.zeros(num_samples, dtype=torch.int64)

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        indices, correct = indices.cpu(), correct.cpu().to(torch.bool)
        self.forgotten[indices] += (self.previous[indices] & ~correct).to(torch.int64)
        self.previous[indices] = correct
        self.learned[indices] |= correct
        self.presentations[indices] += 1

    def scores(self) -> torch.Tensor:
        """Forgetting counts (float64); never-learned samples get their presentation count."""
        counts = self.forgotten.to(torch.float64)
        never = ~self.learned
        counts[never] = self.presentations[never].to(torch.float64)
        return counts


def forgetting_counts(correct_history: torch.Tensor) -> torch.Tensor:
    """Forgetting scores from a (presentations, samples) table of correctness flags: the
    offline definition that :class:`ForgettingTracker` computes online."""
    history = correct_history.to(torch.bool)
    events = (history[:-1] & ~history[1:]).sum(dim=0).to(torch.float64)
    never = ~history.any(dim=0)
    events[never] = float(history.shape[0])
    return events


@torch.no_grad()
def el2n_scores(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    device: torch.device,
    normalize: Any,
    batch_size: int = 1024,
) -> torch.Tensor:
    """EL2N of every sample: ``‖softmax(f(x)) − onehot(y)‖₂`` in eval mode (float64)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(device)
        x = normalize(x) if x.dtype == torch.uint8 else x
        probabilities = F.softmax(model(x).double(), dim=1)
        onehot = F.one_hot(labels[start : start + batch_size].to(device), num_classes).double()
        out.append((probabilities - onehot).norm(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def hardness(
    values: torch.Tensor, kind: str, *, higher_is_harder: bool | None = None
) -> torch.Tensor:
    """The score turned so that a higher value means a harder sample (NaN stays NaN)."""
    direction = HIGHER_IS_HARDER.get(kind) if higher_is_harder is None else higher_is_harder
    if direction is None:
        raise ConfigError(
            f"--score {kind!r} has no known direction; known: {', '.join(HIGHER_IS_HARDER)}"
        )
    values = values.to(torch.float64)
    return values if direction else -values


@dataclass
class ScoreTable:
    """Named score vectors over the training set, with their provenance."""

    scores: dict[str, torch.Tensor]
    directions: dict[str, bool]
    info: dict[str, Any]

    def hardness(self, kind: str) -> torch.Tensor:
        if kind not in self.scores:
            raise ConfigError(
                f"--score must be one of {', '.join(sorted(self.scores))}; got {kind!r}"
            )
        return hardness(self.scores[kind], kind, higher_is_harder=self.directions[kind])

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.scores.items()}
        atomic_write(directory / SCORES_FILE, lambda p: save_file(tensors, p))
        write_json(
            directory / SCORES_MANIFEST,
            {"directions_higher_is_harder": self.directions, **self.info},
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ScoreTable:
        directory = Path(directory)
        if not (directory / SCORES_FILE).is_file():
            raise SelmatchError(
                f"--scores {directory} holds no {SCORES_FILE}; make one with `selmatch experts` "
                "or import one with `selmatch scores --import FILE.npy`"
            )
        info, key = read_json(directory / SCORES_MANIFEST), "directions_higher_is_harder"
        if not isinstance(info, dict) or not isinstance(info.get(key), dict):
            raise SelmatchError(f"{directory / SCORES_MANIFEST} lacks {key} (an object)")
        directions = info.pop(key)
        return cls(read_safetensors(directory / SCORES_FILE), directions, info)

    def check_data(self, flag: str, directory: Path, dataset: ImageDataset) -> ScoreTable:
        """This table, after checking it scores ``dataset``: its name, one score per training
        image, and the content it recorded (:func:`selmatch.data.identity.check_data`); ``flag``
        names the option in errors."""
        from selmatch.data.identity import DATA_KEY, check_data

        name = dataset.name
        if self.info.get("dataset") not in (None, name):
            raise ConfigError(f"{flag} {directory} is for {self.info['dataset']}, not {name}")
        size = int(dataset.train_labels.shape[0])
        for kind, values in self.scores.items():
            if values.dim() != 1 or values.shape[0] != size:
                raise ConfigError(
                    f"{flag} {directory}: its {kind!r} scores {values.numel()} images, "
                    f"the training set of {name} holds {size}; the data changed since the table "
                    "was made: make it again for this data"
                )
        check_data(self.info.get(DATA_KEY), dataset, f"{flag} {directory} was")
        return self

    def checked(
        self,
        flag: str,
        directory: Path,
        dataset: ImageDataset,
        val_fraction: float,
        split_seed: int,
    ) -> ScoreTable:
        """This table, after checking it scores ``dataset`` (:meth:`check_data`) and was made
        on the same hold-out split (so the validation slice stays unseen)."""
        self.check_data(flag, directory, dataset)
        made_with = (self.info.get("val_fraction"), self.info.get("split_seed"))
        if made_with[0] is not None and made_with != (val_fraction, split_seed):
            raise ConfigError(
                f"{flag} {directory} was made with --val-fraction {made_with[0]} --split-seed "
                f"{made_with[1]}; use the same values ({val_fraction} / {split_seed} here) so "
                "validation stays unseen"
            )
        return self

    def merged(self, other: ScoreTable) -> ScoreTable:
        return ScoreTable(
            {**self.scores, **other.scores},
            {**self.directions, **other.directions},
            {**self.info, **other.info},
        )


def import_score_file(path: str | Path, *, num_samples: int) -> torch.Tensor:
    """Read an external per-sample score file (``.npy``, no pickle) and check it."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ConfigError(f"--import {path}: expected a .npy file")
    if not path.is_file():
        raise ConfigError(f"--import {path}: no such file")
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:  # EOFError: an empty file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"--import {path}: not a plain numeric .npy file ({reason})") from None
    if values.ndim != 1 or values.shape[0] != num_samples:
        raise ConfigError(
            f"--import {path} holds shape {values.shape}; expected one score per training "
            f"sample: ({num_samples},)"
        )
    if not np.issubdtype(values.dtype, np.number):
        raise ConfigError(f"--import {path} holds {values.dtype} values; expected numbers")
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ConfigError(f"--import {path} holds {bad} non-finite value(s); all must be finite")
    return torch.from_numpy(values.astype(np.float64))


def combine_expert_scores(
    per_expert: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Average each score kind over experts (NaN where no expert scored a sample)."""
    kinds = per_expert[0].keys()
    return {kind: torch.stack([e[kind] for e in per_expert]).mean(dim=0) for kind in kinds}
