"""What a distillation makes: the set's own spec, apart from how it is matched.

A distillation is ``distill(target, config, ...)``: :class:`SetSpec` (this module) says which set
(the method, images per class, where it starts: the window at β read by a convention on a
score, the learned share α, SeqMatch's K subsets and variant);
:class:`selmatch.distillation.distill.DistillConfig` says how it is matched (N, M, T±, b,
iterations, learning rates, memory, speed levers, seed). A search holds one ``DistillConfig`` for
all its trials, and each trial builds its own ``SetSpec``
(:meth:`selmatch_tune.flow.trials.TrialSpec.target`), so no setting of the set is written twice.
What differs between the methods is asked of the method's object (:attr:`SetSpec.method_kind`,
:mod:`selmatch.distillation.methods`): where the set starts (:func:`initialisation_of`), its stages,
whether it needs scores, which options it takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from selmatch.core.config import Config, check_choice, check_float, check_int, setting
from selmatch.difficulty.score_kinds import score_setting
from selmatch.distillation.methods import METHODS, Method, method_of
from selmatch.distillation.methods import SELMATCH as SELMATCH_METHOD
from selmatch.selection.initial import Initialisation
from selmatch.selection.window import BETA_CONVENTIONS, beta_convention_setting

#: What SeqMatch's stage k matches: a later segment of the ordinary experts, or experts
#: retrained on the earlier subsets first (:mod:`selmatch.distillation.distill`'s docstring).
SEQMATCH_EXPERTS = ("segment", "retrained")
#: SelMatch's initialisations: the difficulty window at β, or a random class-balanced subset
#: (what the search falls back to when a random subset beats every window on validation).
INITS = ("window", "random")
#: the ``--help`` sections of the settings
SELMATCH, SEQMATCH, DIFFICULTY, RUN = "SelMatch", "SeqMatch", "difficulty", "run"


@dataclass(frozen=True)
class SetSpec(Config):
    """The set a distillation makes (module docstring): α, β and K in the papers' symbols."""

    method: str = setting(
        SELMATCH_METHOD.name,
        choices=METHODS,
        help="selmatch: the window at β, the easier α share learned; mtt: a random real start, "
        "everything learned; seqmatch: K subsets learned one after another",
    )
    ipc: int = setting(10, help="images per class of the synthetic set", metavar="IPC")
    init: str = setting(
        "window",
        choices=INITS,
        group=SELMATCH,
        help="window: start from the difficulty window at β (the method); random: from a "
        "random class-balanced subset (--subset-seed), what the search falls back to when it "
        "beats every window; its D_distill is a random α share",
    )
    beta: float = setting(
        0.0, symbol="β", group=SELMATCH, help="window start (its meaning: --beta-convention)"
    )
    alpha: float = setting(
        0.5,
        symbol="α",
        group=SELMATCH,
        help="share of the window that is learned (D_distill), in [0, 1]; 0 = selection only",
    )
    beta_convention: str = beta_convention_setting(group=DIFFICULTY)
    score: str = score_setting(group=DIFFICULTY)
    subset_seed: int | None = setting(
        None,
        group=RUN,
        help="seed of a random initial subset (mtt, seqmatch, --init random) (default: --seed)",
    )
    subsets: int = setting(2, symbol="K", group=SEQMATCH, help="subsets learned one after another")
    seqmatch_experts: str = setting(
        "segment",
        choices=SEQMATCH_EXPERTS,
        group=SEQMATCH,
        help="what stage k matches. segment: the k-th of K segments of [T-, T+) of the "
        "ordinary experts (the paper's description; no extra training). retrained: as the "
        "authors' code, new experts that first learn S1 (with S1's learned lr), then S1+S2 "
        "(S2's), ..., then train on the real data with the experts' settings while their "
        "trajectory is recorded; stage k matches their start epochs [T-, T+) (the last stage "
        "the first half), the learnable lr restarting at --lr-init each stage",
    )
    merge: bool = setting(
        False,
        group=SELMATCH,
        help="ablation (Table 4): compute the loss on D_distill alone and merge D_select "
        "afterwards",
    )

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_int("ipc", self.ipc, 1)
        check_choice("init", self.init, INITS)
        self.method_kind.check_option(self, "init")
        check_float("beta", self.beta, 0.0)
        # α = 0 is selection only: nothing is learned, the set is its initialisation
        check_float("alpha", self.alpha, 0.0, 1.0)
        if self.subset_seed is not None:
            check_int("subset_seed", self.subset_seed, 0, 2**31 - 1)
        check_choice("beta_convention", self.beta_convention, BETA_CONVENTIONS)
        check_int("subsets", self.subsets, 1, self.ipc)
        self.method_kind.check_option(self, "merge")
        check_choice("seqmatch_experts", self.seqmatch_experts, SEQMATCH_EXPERTS)
        self.method_kind.check_option(self, "seqmatch_experts")

    @property
    def retrained(self) -> bool:
        """SeqMatch with the authors' retrained stage experts."""
        return self.seqmatch_experts == "retrained"

    @property
    def method_kind(self) -> Method:
        """The method's object (:mod:`selmatch.distillation.methods`), which says what differs."""
        return method_of(self.method)

    @property
    def stages(self) -> int:
        """How many stages learn the set, one after another (SeqMatch's K; 1 otherwise)."""
        return self.method_kind.stages(self)

    @property
    def needs_scores(self) -> bool:
        """Whether the set starts from a difficulty window (and so needs the scores)."""
        return self.method_kind.needs_scores(self)

    def random_subset_seed(self, seed: int) -> int:
        """The seed of a random initial subset: ``subset_seed``, else the run's ``seed``."""
        return seed if self.subset_seed is None else self.subset_seed


#: the set's settings among the flat ``distill`` settings of a manifest or a checkpoint
SET_KEYS = tuple(f.name for f in dataclasses.fields(SetSpec))


def target_of(settings: Mapping[str, Any]) -> SetSpec:
    """The set's spec among flat settings (a manifest's ``distill``, a checkpoint's): the
    settings that are :data:`SET_KEYS`."""
    return SetSpec.from_dict({k: v for k, v in settings.items() if k in SET_KEYS})


def initialisation_of(target: SetSpec, seed: int) -> Initialisation:
    """Where a distillation of ``target`` starts (:mod:`selmatch.selection.initial`): its method's
    choice (:meth:`selmatch.distillation.methods.Method.initialisation`). ``seed``: the run's, a
    random subset's unless ``subset_seed`` says otherwise."""
    return target.method_kind.initialisation(target, seed)
