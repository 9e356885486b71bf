"""The distillation methods, as objects: SelMatch, MTT and SeqMatch.

Everything that differs between the methods is asked of its :class:`Method` object, never
decided by comparing ``SetSpec.method`` with a name: where its set starts
(:meth:`Method.initialisation`), in how many stages it is learned, whether it needs
difficulty scores, where its learnable lr η starts, what its manifest adds, how its set is
evaluated, and which of the set's options it takes. :data:`REGISTRY` holds one object per
``--method`` choice; ``tests/test_methods.py`` runs the same contract on each.

- :data:`SELMATCH`: the difficulty window at β (or a random subset, ``--init random``), the
  easier α share learned; the only method that takes ``--init`` and ``--merge``.
- :data:`MTT`: random class-balanced real images, every one learned.
- :data:`SEQMATCH`: K subsets learned one after another; takes ``--seqmatch-experts``, and
  its set can be evaluated in its sequential order.

The rule "α > 0 ⇒ combined augmentation" is :func:`evaluation_augment` (for a saved set:
:func:`saved_set_augment`): every evaluation of a set calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from selmatch.core.config import ConfigError
from selmatch.selection.initial import (
    Initial,
    Initialisation,
    RandomInit,
    RealInit,
    SequentialInit,
    WindowInit,
)
from selmatch.selection.window import WindowSpec

if TYPE_CHECKING:
    from selmatch.distillation.target import SetSpec

#: How a set is trained at evaluation (:mod:`selmatch.evaluation.evaluate`): the whole set at
#: once, or (a sequential method's set) its subsets one after another.
UNION, SEQUENTIAL = "union", "sequential"


def evaluation_augment(alpha: float, otherwise: str = "dsa") -> str:
    """The evaluation augmentation of a set whose learned share is α: ``combined`` (DSA on
    ``D_distill``, crop+flip on ``D_select``; SelMatch, Table 3) when α > 0, else
    ``otherwise`` (a selection only, α = 0, trains as the β trials train it). The one place
    the rule is written."""
    return "combined" if alpha > 0 else otherwise


def saved_set_augment(distill_mask: torch.Tensor | None, otherwise: str = "dsa") -> str:
    """:func:`evaluation_augment` for a saved set, whose learned share is its mask's."""
    share = 0.0 if distill_mask is None else float(distill_mask.float().mean())
    return evaluation_augment(share, otherwise)


class Method(Protocol):
    """A distillation method: what :func:`selmatch.distillation.distill.distill`, the command line
    and the evaluation ask of it (module docstring). ``target`` is always a spec of this
    method."""

    @property
    def name(self) -> str:
        """As ``--method`` spells it, and as manifests record it."""
        ...

    @property
    def lr_init(self) -> float:
        """The learnable lr η's start unless ``--lr-init`` is given (METHOD.md: SelMatch's
        scripts 0.001, MTT's 0.01)."""
        ...

    @property
    def alpha(self) -> float | None:
        """The share of the set it learns where that is fixed (every image: 1.0); ``None``
        where α is a setting."""
        ...

    @property
    def sequential(self) -> bool:
        """Whether its subsets are learned one after another (and can be evaluated so)."""
        ...

    @property
    def options(self) -> frozenset[str]:
        """The set's options only some methods take that this one does (``SetSpec``
        fields)."""
        ...

    def initialisation(self, target: SetSpec, seed: int) -> Initialisation:
        """Where the set starts (:mod:`selmatch.selection.initial`); ``seed``: the run's."""
        ...

    def stages(self, target: SetSpec) -> int:
        """How many stages learn the set, one after another (≥ 1)."""
        ...

    def needs_scores(self, target: SetSpec) -> bool:
        """Whether the set starts from a difficulty window (and so needs the scores)."""
        ...

    def manifest_extras(
        self,
        target: SetSpec,
        initial: Initial,
        stage_lrs: Sequence[float],
        stage_folders: Sequence[str],
    ) -> dict[str, Any]:
        """What the saved set's manifest adds for this method (plain JSON)."""
        ...

    @property
    def eval_orders(self) -> tuple[str, ...]:
        """The orders its set may be trained in at evaluation (the first: the default)."""
        ...

    def evaluation_augment(self, target: SetSpec, otherwise: str = "dsa") -> str:
        """The augmentation its set is evaluated with (:func:`evaluation_augment`)."""
        ...

    def check_option(self, target: SetSpec, option: str) -> None:
        """A :class:`ConfigError` naming ``option`` where ``target`` uses it and this
        method does not take it."""
        ...


#: the options only some methods take: whether a spec uses one, and how a refusal reads
#: (``{owners}``: the methods that take it)
OWN_OPTIONS = {
    "init": (lambda target: target.init != "window", "--init applies to --method {owners} only"),
    "merge": (lambda target: target.merge, "--merge is an ablation of --method {owners} only"),
    "seqmatch_experts": (
        lambda target: target.retrained,
        "--seqmatch-experts retrained applies to --method {owners} only",
    ),
}


@dataclass(frozen=True)
class _Shared:
    """What every method does alike; each method is a subclass with its own fields."""

    name: str
    lr_init: float
    alpha: float | None = None
    sequential: bool = False
    options: frozenset[str] = frozenset()

    def stages(self, target: SetSpec) -> int:
        return 1

    def needs_scores(self, target: SetSpec) -> bool:
        return False

    def manifest_extras(
        self,
        target: SetSpec,
        initial: Initial,
        stage_lrs: Sequence[float],
        stage_folders: Sequence[str],
    ) -> dict[str, Any]:
        """The keys a sequential method fills, ``None`` here."""
        return {"subset_ids": None, "seqmatch_experts": None, "stage_lrs": None}

    @property
    def eval_orders(self) -> tuple[str, ...]:
        return (UNION, SEQUENTIAL) if self.sequential else (UNION,)

    def learned_share(self, target: SetSpec) -> float:
        """α: the method's own, else the spec's."""
        return target.alpha if self.alpha is None else self.alpha

    def evaluation_augment(self, target: SetSpec, otherwise: str = "dsa") -> str:
        return evaluation_augment(self.learned_share(target), otherwise)

    def check_option(self, target: SetSpec, option: str) -> None:
        used, text = OWN_OPTIONS[option]
        if used(target) and option not in self.options:
            owners = ", ".join(m.name for m in REGISTRY.values() if option in m.options)
            raise ConfigError(text.format(owners=owners))


@dataclass(frozen=True)
class SelMatch(_Shared):
    """The window at β, its easier α share learned (or a random subset, ``--init random``)."""

    def initialisation(self, target: SetSpec, seed: int) -> Initialisation:
        if self.needs_scores(target):
            return WindowInit(
                WindowSpec(target.ipc, target.beta, target.alpha, target.beta_convention)
            )
        return RandomInit(target.ipc, target.alpha, target.random_subset_seed(seed))

    def needs_scores(self, target: SetSpec) -> bool:
        return target.init == "window"


@dataclass(frozen=True)
class Mtt(_Shared):
    """Random class-balanced real images, every one learned."""

    def initialisation(self, target: SetSpec, seed: int) -> Initialisation:
        return RealInit(target.ipc, target.random_subset_seed(seed))


@dataclass(frozen=True)
class SeqMatch(_Shared):
    """K subsets of a random class-balanced draw, learned one after another."""

    def initialisation(self, target: SetSpec, seed: int) -> Initialisation:
        return SequentialInit(target.ipc, target.subsets, target.random_subset_seed(seed))

    def stages(self, target: SetSpec) -> int:
        return target.subsets

    def manifest_extras(
        self,
        target: SetSpec,
        initial: Initial,
        stage_lrs: Sequence[float],
        stage_folders: Sequence[str],
    ) -> dict[str, Any]:
        """What sequential evaluation needs (each image's subset, each stage's learned lr)
        and which variant made the set."""
        return {
            "subset_ids": initial.subset_ids.tolist(),
            "seqmatch_experts": target.seqmatch_experts,
            "stage_lrs": list(stage_lrs),
            "stage_expert_folders": list(stage_folders),
        }


SELMATCH = SelMatch("selmatch", lr_init=0.001, options=frozenset({"init", "merge"}))
MTT = Mtt("mtt", lr_init=0.01, alpha=1.0)
SEQMATCH = SeqMatch(
    "seqmatch", lr_init=0.01, alpha=1.0, sequential=True, options=frozenset({"seqmatch_experts"})
)
#: every method by name, in the order ``--method`` lists them
REGISTRY: dict[str, Method] = {m.name: m for m in (SELMATCH, MTT, SEQMATCH)}
#: the ``--method`` choices
METHODS = tuple(REGISTRY)


def find_method(name: object) -> Method | None:
    """The method named ``name``; ``None`` where it names none (a manifest of another kind
    of set, or of none)."""
    return REGISTRY.get(name) if isinstance(name, str) else None


def method_of(name: str) -> Method:
    """The method named ``name`` (a checked ``SetSpec.method``)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {name!r}") from None
