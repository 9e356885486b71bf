"""The search's phases as registered objects: what each one searches, over which grid setting,
with which trial, and how the log, the curves, MLflow and the cost table name it. Every part
of the search that handles phases loops over :data:`PHASES` (the record, the costs, the
curves, the trial logger, the phase runner) instead of comparing names.

A new phase is one :class:`PhaseKind` given to :func:`register_phase`, the grid setting it
names (a field of :class:`~selmatch_tune.settings.config.SearchConfig`) and its trial function (a
plain
``trial(config, data)`` that reports ``val_accuracy``, as :mod:`selmatch_tune.flow.trials`' do);
the search procedure decides when it runs (tune/flow/search.py).

This module imports nothing heavy (the trial functions are found by name when a phase runs),
so the record and the notebook read it without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class PhaseKind:
    """One kind of phase. ``name`` is its key everywhere: the record's field, the searched
    leaf of a trial's config, the Tune experiment's and the curve's file name prefix."""

    name: str
    #: the searched value's symbol in the log and MLflow (``β = 0.3``)
    symbol: str
    #: how a log line names it ("searching SeqMatch's K over ...")
    shown: str
    #: how a curve's title names it ("SeqMatch K search, IPC 10")
    title: str
    #: the field of SearchConfig holding its grid
    grid_setting: str
    #: its trial function, ``module:function``
    trial_path: str
    #: the curve's x-axis label; ``{convention}`` is replaced by the β convention
    xlabel: str
    #: the cost table's name of its trials
    stage: str
    #: the fixed candidate evaluated beside its grid: the field of its PhaseResult that holds
    #: it, and the cost table's name of it
    candidate: tuple[str, str] | None = None
    #: where its value goes in a trial's spec, a dotted path (``distill.max_start_epoch``);
    #: ``None``: the spec's field of its own name (``beta``, ``alpha``, ``subsets``)
    sets: str | None = None
    #: its values are whole numbers (K, an epoch)
    integer: bool = False
    #: it refines the IPC's winner: it runs after the winner is chosen, every trial the
    #: winner's distillation with the searched value set, and the winner takes the best value
    #: when it beats the winner on validation (a tie keeps the winner); its grid setting
    #: empty: it does not run
    refines: bool = False
    #: the method (a name of selmatch.distillation.methods.REGISTRY) whose distillation this phase
    #: searches; it runs only when the search's --method includes it (None: always)
    method: str | None = None

    @property
    def trial(self) -> Callable[..., None]:
        module, function = self.trial_path.split(":")
        trial: Callable[..., None] = getattr(import_module(module), function)
        return trial

    def grid(self, config: Any) -> tuple[float, ...]:
        """The full grid the settings give (before the monotone rule bounds it)."""
        return tuple(float(v) for v in getattr(config, self.grid_setting))

    def axis(self, beta_convention: str) -> str:
        return self.xlabel.format(convention=beta_convention)

    def cast(self, value: float) -> float | int:
        return round(value) if self.integer else float(value)

    def applied(self, spec: dict[str, Any], value: float) -> dict[str, Any]:
        """A trial spec's dict with this phase's value set where :attr:`sets` says."""
        *parents, leaf = (self.sets or self.name).split(".")
        out = dict(spec)
        node = out
        for part in parents:
            node[part] = dict(node[part])
            node = node[part]
        node[leaf] = self.cast(value)
        return out


def refining_phases() -> tuple[PhaseKind, ...]:
    """The registered phases that refine an IPC's winner, in the order they run."""
    return tuple(kind for kind in PHASES.values() if kind.refines)


#: every phase, in the order a search runs them at an IPC
PHASES: dict[str, PhaseKind] = {}


def register_phase(kind: PhaseKind) -> PhaseKind:
    if kind.name in PHASES:
        raise ValueError(f"phase {kind.name!r} is registered twice")
    PHASES[kind.name] = kind
    return kind


BETA = register_phase(
    PhaseKind(
        name="beta",
        symbol="β",
        shown="beta",
        title="beta",
        grid_setting="beta_grid",
        trial_path="selmatch_tune.flow.trials:beta_trial",
        xlabel="β ({convention})",
        stage="β trials",
        candidate=("random", "random subset (β candidate)"),
    )
)
ALPHA = register_phase(
    PhaseKind(
        name="alpha",
        symbol="α",
        shown="alpha",
        title="alpha",
        grid_setting="alpha_grid",
        trial_path="selmatch_tune.flow.trials:alpha_trial",
        xlabel="α (distilled share)",
        stage="α trials",
        candidate=("mtt", "plain MTT (α candidate)"),
        method="selmatch",
    )
)
SUBSETS = register_phase(
    PhaseKind(
        name="subsets",
        symbol="K",
        shown="SeqMatch's K",
        title="SeqMatch K",
        grid_setting="subsets_grid",
        trial_path="selmatch_tune.flow.trials:alpha_trial",
        xlabel="K (SeqMatch subsets)",
        stage="K trials (SeqMatch)",
        integer=True,
        method="seqmatch",
    )
)
MAX_START = register_phase(
    PhaseKind(
        name="max_start_epoch",
        symbol="T+",
        shown="T+ (the latest start epoch)",
        title="T+",
        grid_setting="max_start_epoch_grid",
        trial_path="selmatch_tune.flow.trials:alpha_trial",
        xlabel="T+ (latest expert epoch a segment starts at)",
        stage="T+ trials",
        sets="distill.max_start_epoch",
        integer=True,
        refines=True,
    )
)


def phase_kind(name: str) -> PhaseKind:
    """The registered phase ``name``."""
    try:
        return PHASES[name]
    except KeyError:
        raise KeyError(f"no phase {name!r}; registered: {', '.join(PHASES)}") from None
