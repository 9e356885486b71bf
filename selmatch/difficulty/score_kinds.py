"""The difficulty scores, as objects: how each is made, which way is hard, what it costs.

Every score a window can be ordered by is a :class:`Score` in :data:`REGISTRY`: its name (as
``--score`` spells it and a score table stores it), its direction (``higher_is_harder``; the
direction bug is the most reported selection bug of this field, hence
``tests/test_score_kinds.py``), how it is made (a sentence and, where there is one, the
function), and what it costs. Three ways to make one:

- computed while the experts train (:class:`ExpertScore`): Forgetting and EL2N, higher =
  harder (:mod:`selmatch.difficulty.scores`);
- estimated by a command of its own (:class:`EstimatedScore`): consistency, a hold-out C-score
  (``selmatch scores --estimate consistency``, :mod:`selmatch.selection.consistency`), higher =
  easier;
- read from a file (:class:`ImportedScore`): the published C-score (``selmatch scores
  --import FILE.npy --name cscore``), lower = harder. A table records each score's direction,
  and :meth:`selmatch.difficulty.scores.ScoreTable.hardness` reads it from there; an import under a
  name not registered here takes its direction from ``--hardest``.

This module imports nothing of the package: :data:`selmatch.difficulty.scores.HIGHER_IS_HARDER`
comes from it, and each score names its function by its dotted path (:meth:`Score.function`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class Score(Protocol):
    """A kind of difficulty score (module docstring)."""

    #: the command that makes it
    made_by: ClassVar[str]

    @property
    def name(self) -> str:
        """As ``--score`` spells it and a score table stores it."""
        ...

    @property
    def higher_is_harder(self) -> bool:
        """Whether a higher value means a harder sample."""
        ...

    @property
    def description(self) -> str:
        """How it is computed or read, in a sentence."""
        ...

    @property
    def cost(self) -> str:
        """What it costs, in a line."""
        ...

    @property
    def computed_by(self) -> str | None:
        """The dotted path of what computes it; ``None`` for a score read from a file."""
        ...

    def function(self) -> Callable[..., Any] | None:
        """The function that computes it (``computed_by``, imported), ``None`` if read."""
        ...


@dataclass(frozen=True)
class _Kind:
    name: str
    higher_is_harder: bool
    description: str
    cost: str
    computed_by: str | None = None

    def function(self) -> Callable[..., Any] | None:
        if self.computed_by is None:
            return None
        module, _, attribute = self.computed_by.rpartition(".")
        found: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
        return found


@dataclass(frozen=True)
class ExpertScore(_Kind):
    """Computed while the experts train (``selmatch experts``), averaged over experts."""

    made_by: ClassVar[str] = "selmatch experts"


@dataclass(frozen=True)
class EstimatedScore(_Kind):
    """Estimated by networks of its own (``selmatch scores --estimate NAME``)."""

    made_by: ClassVar[str] = "selmatch scores --estimate"


@dataclass(frozen=True)
class ImportedScore(_Kind):
    """Read from a file of one number per training sample (``selmatch scores --import``)."""

    made_by: ClassVar[str] = "selmatch scores --import"


FORGETTING = ExpertScore(
    "forgetting",
    True,
    "Toneva et al. (2019): the times a sample goes from correctly to wrongly classified "
    "between successive presentations while an expert trains (never learned: most forgotten)",
    "free with the experts (counted from each mini-batch's predictions)",
    "selmatch.difficulty.scores.ForgettingTracker",
)
EL2N = ExpertScore(
    "el2n",
    True,
    "Paul et al. (2021): ‖softmax(f(x)) − onehot(y)‖₂ of each expert early in training",
    "one pass over the training set per expert, at --el2n-epoch",
    "selmatch.difficulty.scores.el2n_scores",
)
CSCORE = ImportedScore(
    "cscore",
    False,
    "the published C-score (Jiang et al. 2021): expected accuracy on a sample of networks "
    "trained without it; read from a .npy file with its recorded direction",
    "free here (published for CIFAR; computing it took the authors thousands of networks)",
)
CONSISTENCY = EstimatedScore(
    "consistency",
    False,
    "a hold-out C-score estimate: the probability of a sample's label under the networks "
    "whose class-balanced training fraction held it out (each sample held out at least twice)",
    "K networks (--networks, at least two rounds of ⌈1/(1 − s)⌉) of --epochs each, each on "
    "a --train-fraction s of the pool",
    "selmatch.selection.consistency.estimate_consistency",
)

#: every registered score by name (the order the error messages list them in)
REGISTRY: dict[str, Score] = {s.name: s for s in (FORGETTING, EL2N, CSCORE, CONSISTENCY)}


def of_kind(kind: type) -> tuple[Score, ...]:
    """The registered scores made one way: :class:`ExpertScore`, :class:`EstimatedScore` or
    :class:`ImportedScore`."""
    return tuple(s for s in REGISTRY.values() if isinstance(s, kind))


def imported_direction(name: str) -> bool:
    """The direction an import under ``name`` gets when ``--hardest`` is not given: the
    registered imported score's (cscore: lower = harder), else higher = harder."""
    known = REGISTRY.get(name)
    return known.higher_is_harder if isinstance(known, ImportedScore) else True


def score_setting(group: str = "", help: str = "") -> Any:
    """The difficulty score as every config declares it (the set's, the sweep's, the
    search's): one default, forgetting (free with the experts); ``help`` where a command says
    more about where the score comes from."""
    from selmatch.core.config import setting

    return setting(
        FORGETTING.name,
        group=group,
        help=help
        or "which score orders the samples: consistency, forgetting, el2n, or an "
        "imported one such as cscore",
    )
