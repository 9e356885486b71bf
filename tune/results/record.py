"""The search's record, ``OUT/search_state.json``, typed: what every finished stage found.

One :class:`SearchRecord` per search folder, one :class:`IpcRecord` per IPC begun, in it one
:class:`PhaseResult` per phase run (``beta``, ``alpha``, ``subsets``: SeqMatch's K), the
:class:`Winner` and the :class:`FinalResult`. The search, its outputs, the notebook and the
study read it through :meth:`SearchRecord.load` only, after
:data:`selmatch.core.migrate.SEARCH_RECORD`'s migration, so a search begun by an earlier version
resumes and its folder still reads (grid values and IPCs are string keys, parts not yet known
left out).

:func:`open_record` is the one "resume only with the same settings" check of a search folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selmatch.core.artifacts import SEARCH_STATE
from selmatch.core.config import Config, ConfigError, check_resumable
from selmatch.core.io import write_json
from selmatch.core.migrate import SEARCH_RECORD, migrate
from selmatch.distillation.methods import method_of
from selmatch.selection.initial import RandomInit
from selmatch_tune.settings.config import SearchConfig
from selmatch_tune.settings.phase_kinds import ALPHA, PHASES, phase_kind

STATE = SEARCH_STATE  # the marker of a search folder (selmatch.core.artifacts)
Log = Callable[[str], None]


@dataclass
class StageCost(Config):
    """What one stage of the search cost: its wall time (in the runs that did its work; a
    stage restored on ``--resume`` adds the resumed part), the seconds its trials spent
    (fetching the data and working, summed over trials) and the trial slots it had."""

    OMIT_NONE = True
    seconds: float
    trial_seconds: float | None = None
    slots: int | None = None

    @property
    def unused_slot_seconds(self) -> float | None:
        """Slots × wall time − the trials' seconds, at least 0 (``None``: not a Tune stage)."""
        if self.trial_seconds is None or not self.slots:
            return None
        return max(0.0, self.slots * self.seconds - self.trial_seconds)

    @property
    def idle(self) -> float | None:
        """The slots' share left unused: :attr:`unused_slot_seconds` / (slots × wall)."""
        unused = self.unused_slot_seconds
        if unused is None or self.seconds <= 0:
            return None
        return unused / ((self.slots or 1) * self.seconds)

    def plus(self, other: StageCost | None) -> StageCost:
        """This cost and ``other``'s, one stage run in parts (an interrupted, resumed one)."""
        if other is None:
            return self
        trial = (
            None
            if self.trial_seconds is None and other.trial_seconds is None
            else (self.trial_seconds or 0.0) + (other.trial_seconds or 0.0)
        )
        return StageCost(self.seconds + other.seconds, trial, self.slots or other.slots)


@dataclass
class Point(Config):
    """One grid value of a phase: means over its completed trials (short budget)."""

    OMIT_NONE = True
    val: float
    test: float
    n: int
    fetch_seconds: float | None = None
    work_seconds: float | None = None


@dataclass
class Baseline(Config):
    """A fixed candidate of a phase (the random subset in β's, plain MTT in α's): its means
    over ``n`` evaluations; the failed ones are counted, never scored."""

    OMIT_NONE = True
    val: float
    test: float
    n: int
    failed: int = 0
    work_seconds: float | None = None
    cost: StageCost | None = None
    #: the standard deviation of its repeats' validation scores (seed to seed; None below 2)
    noise: float | None = None


@dataclass
class Score(Config):
    """The short-budget scores another phase's winner had (what SeqMatch's K phase beat)."""

    val: float
    test: float


@dataclass
class PhaseResult(Config):
    """One phase at one IPC: the curve (grid value → :class:`Point`), the best value, how
    many trials it took (failed ones included) and the phase's own extras."""

    OMIT_NONE = True
    curve: dict[float, Point]
    best: float
    trials: int
    failed: int
    grid: tuple[float, ...] = ()
    #: β: where the α phase starts ("window" or "random", which beat the other on
    #: validation); α: where it started
    init: str | None = None
    random: Baseline | None = None  # β: the random class-balanced subset
    mtt: Baseline | None = None  # α: plain MTT (random subset, α = 1)
    seqmatch_experts: str | None = None  # K: the stage experts' variant
    against: Score | None = None  # K: the α phase's winner it was compared with
    #: the spread measured between repeats of one grid value (pooled std of validation
    #: accuracy; 0: no value was repeated)
    noise: float | None = None
    cost: StageCost | None = None  # the phase's trials (its baseline has its own)

    @property
    def best_point(self) -> Point:
        return self.curve[self.best]


#: what can win an IPC (:attr:`Winner.candidate`) and the method that made it
CANDIDATES = {"alpha": "selmatch", "mtt": "mtt", "seqmatch": "seqmatch"}


@dataclass
class Winner(Config):
    """Which candidate won an IPC: the α phase's best (``alpha``), plain MTT (``mtt``) or the K
    phase's SeqMatch (``seqmatch``, with its K)."""

    OMIT_NONE = True
    init: str
    alpha: float
    candidate: str
    subsets: int | None = None
    #: the refining phases' values it took (``{"max_start_epoch": 6}``), in the order they ran
    refined: dict[str, float] | None = None

    @property
    def method(self) -> str:
        """The method that made it (a name of selmatch.distillation.methods.REGISTRY)."""
        return CANDIDATES[self.candidate]

    @property
    def plain_mtt(self) -> bool:
        """Whether the α phase's candidate beside its grid (plain MTT) won."""
        return ALPHA.candidate is not None and self.candidate == ALPHA.candidate[0]

    @property
    def sequential(self) -> bool:
        """Whether its method matches subsets one after another (SeqMatch)."""
        return method_of(self.method).sequential

    def label(self, beta: float | None = None) -> str:
        """What it is, in a few words: ``SelMatch α=0.5``, ``plain MTT``, ``SeqMatch K=2``,
        ``the random subset``, ``the window β=0.3`` (``beta``: the β phase's best), with the
        values refining phases gave it (``T+=6``)."""
        if self.alpha == 0 and not self.refined:
            random = self.init == RandomInit.kind
            window = "the window" if beta is None else f"the window β={beta:g}"
            return "the random subset" if random else window
        if self.plain_mtt:
            text = "plain MTT"
        elif self.sequential:
            text = f"SeqMatch K={self.subsets}"
        else:
            start = " from the random subset" if self.init == RandomInit.kind else ""
            text = f"SelMatch α={self.alpha:g}{start}"
        for name, value in (self.refined or {}).items():
            text += f" {phase_kind(name).symbol}={value:g}"
        return text


@dataclass
class Candidate(Config):
    """A candidate for an IPC's winner, kept for the decision at the target budget: what it
    is (a :class:`Winner`), its short-budget scores and its set (a folder; ``None`` for a
    selection, the random subset or the window at β, which is rebuilt from the data)."""

    OMIT_NONE = True
    winner: Winner
    short: Score
    set_dir: str | None = None


@dataclass
class Finalist(Config):
    """A candidate evaluated at the target budget: its short-budget validation score (what
    ranked it) beside its target-budget scores, over the same seeds as every other finalist
    (common random numbers: the differences between finalists are paired)."""

    short_val: float
    val_mean: float
    test_mean: float
    test_std: float
    val: tuple[float, ...]  # per seed
    seeds: tuple[int, ...]


@dataclass
class FullPoint(Config):
    """A top β window evaluated with the full budget beside its short-budget score."""

    short_val: float
    full_val: float
    full_test: float


@dataclass
class Reference(Config):
    """A random class-balanced subset of the IPC, trained like the winner."""

    test_mean: float
    test_std: float
    val_mean: float
    seeds: tuple[int, ...]


@dataclass
class FinalResult(Config):
    """The winner with the full budget, the top β windows, the random reference."""

    OMIT_NONE = True
    test_mean: float
    test_std: float
    val_mean: float
    seeds: tuple[int, ...]
    epochs: int
    beta_full: dict[float, FullPoint] = field(default_factory=dict)
    random: Reference | None = None
    cost: StageCost | None = None  # the winner's, the top windows' and the reference's
    #: the candidates evaluated at the target budget, by label (empty: the winner was chosen
    #: at the short budget, ``--finalists 0`` or a search begun before finalists existed)
    finalists: dict[str, Finalist] | None = None
    #: Spearman's ρ of the finalists' short-budget and target-budget validation scores (None
    #: below 3 finalists): how faithfully the short budget ranked them
    fidelity_rank_correlation: float | None = None
    #: the margin within which two finalists counted as tied (two standard errors of their
    #: paired difference over seeds), and whether a tie added seeds
    tie_margin: float | None = None
    tie_repeated: bool | None = None


@dataclass
class IpcRecord(Config):
    """What the search found at one IPC so far (a phase not run yet is ``None``)."""

    OMIT_NONE = True
    beta: PhaseResult | None = None
    alpha: PhaseResult | None = None
    subsets: PhaseResult | None = None
    winner: Winner | None = None
    set_dir: str | None = None
    final: FinalResult | None = None
    #: the phases that refine the winner (:attr:`PhaseKind.refines`), by name
    refinements: dict[str, PhaseResult] | None = None
    #: what the target-budget decision chooses from, by label (``--finalists``)
    candidates: dict[str, Candidate] | None = None

    def add_candidate(self, label: str, candidate: Candidate) -> None:
        self.candidates = {**(self.candidates or {}), label: candidate}

    def phase(self, name: str) -> PhaseResult | None:
        """The result of the registered phase ``name`` (None: not run yet)."""
        kind = phase_kind(name)
        if kind.refines:
            return (self.refinements or {}).get(kind.name)
        result: PhaseResult | None = getattr(self, kind.name)
        return result

    def set_phase(self, name: str, result: PhaseResult) -> None:
        """Record the result of the registered phase ``name``."""
        kind = phase_kind(name)
        if kind.refines:
            self.refinements = {**(self.refinements or {}), kind.name: result}
        else:
            setattr(self, kind.name, result)

    def measured_noise(self) -> float:
        """The seed-to-seed noise measured at this IPC's short budget so far: the largest of
        the phases' (the spread between repeats of a grid value) and their baselines' (the
        random subset's and plain MTT's repeats); 0 before any repeat."""
        found = [0.0]
        for name in PHASES:
            phase = self.phase(name)
            if phase is None:
                continue
            found.append(phase.noise or 0.0)
            for baseline in (phase.random, phase.mtt):
                if baseline is not None:
                    found.append(baseline.noise or 0.0)
        return max(found)

    def winner_scores(self) -> Score:
        """The winner's short-budget validation and test scores (a refined winner's: the last
        refining phase's best, which it took)."""
        winner = self.winner
        assert winner is not None, "an IPC's winner is chosen with its α phase"
        kept = (self.candidates or {}).get(winner.label(self.beta.best if self.beta else None))
        if kept is not None:  # a candidate of the decision at the target budget
            return kept.short
        if winner.refined:
            last = self.phase(list(winner.refined)[-1])
            assert last is not None, "a refined winner's phase is recorded"
            return Score(val=last.best_point.val, test=last.best_point.test)
        if winner.sequential:
            assert self.subsets is not None
            point: Point | Baseline = self.subsets.best_point
        else:
            assert self.alpha is not None
            mtt = winner.plain_mtt and self.alpha.mtt is not None
            point = self.alpha.mtt if mtt and self.alpha.mtt else self.alpha.best_point
        return Score(val=point.val, test=point.test)

    def selected_as_is(self) -> str | None:
        """``"window"`` or ``"random"`` when the winner learned nothing (α = 0) and so is that
        selection itself, else ``None``."""
        winner = self.winner
        assert winner is not None, "an IPC's winner is chosen with its α phase"
        return winner.init if winner.alpha == 0 else None


@dataclass
class SearchRecord(Config):
    """A search folder's record. ``started``: the precompute finished, so the folder holds a
    search. ``data``:
    what the search ran on (:func:`selmatch.data.identity.data_identity`; a resume must run on the
    same)."""

    OMIT_NONE = True
    config: dict[str, Any]
    ipcs: dict[int, IpcRecord] = field(default_factory=dict)
    started: bool = False
    data: dict[str, Any] | None = None
    parent_run_id: str | None = None
    storage_id: str | None = None
    score_dir: str | None = None
    seconds: float | None = None
    precompute: StageCost | None = None
    rank_correlation_by_ipc: dict[int, float | None] | None = None
    rank_correlation_short_vs_full: float | None = None

    def at(self, ipc: int) -> IpcRecord:
        """The record of ``ipc``, begun if it is not there yet."""
        return self.ipcs.setdefault(ipc, IpcRecord())

    @classmethod
    def load(cls, path: str | Path) -> SearchRecord:
        """The record in ``path`` (a search folder or its ``search_state.json``)."""
        path = Path(path)
        path = path / STATE if path.is_dir() else path
        try:
            data = migrate(SEARCH_RECORD, json.loads(path.read_text()), path)
            return cls.from_dict({k: v for k, v in data.items() if k != SEARCH_RECORD.key})
        except (ConfigError, TypeError, KeyError, ValueError) as error:
            raise ConfigError(
                f"{path} is not a search record this version reads: {error}"
            ) from None

    def save(self, out: Path) -> None:
        write_json(out / STATE, {SEARCH_RECORD.key: SEARCH_RECORD.version, **self.to_dict()})

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.rank_correlation_by_ipc is not None:  # ρ is None below 3 points: kept
            out["rank_correlation_by_ipc"] = {
                str(k): v for k, v in self.rank_correlation_by_ipc.items()
            }
        if self.rank_correlation_by_ipc is not None or "rank_correlation_by_ipc" in out:
            out["rank_correlation_short_vs_full"] = self.rank_correlation_short_vs_full
        return out


def open_record(out: Path, config: SearchConfig, resume: bool, log: Log = print) -> SearchRecord:
    """The search's record in ``out``: a new one, or (``resume``) the one saved there, checked
    against ``config`` (the same settings; only ``ipcs`` may grow, the IPCs begun first). A
    folder holds a search once its precompute has finished (``started``); before that, nothing
    a trial made is in it, so a start that failed (bad settings, missing data, Ctrl-C while the
    experts train, whose finished networks are cached beside the folder) never blocks the same
    command, with or without ``--resume``. Nothing is written."""
    path = out / STATE
    new = SearchRecord(config=config.to_dict(), started=False)
    if not path.is_file():
        if resume:
            raise ConfigError(
                f"--resume: {out} holds no search (no {STATE}); give the --out of the search "
                "to continue"
            )
        return new
    record = SearchRecord.load(path)
    if not record.started:
        log(f"{out} holds a search that stopped before its first trial: starting it anew")
        return new
    if not resume:
        raise ConfigError(f"--out {out} holds a search already; add --resume or pick another --out")
    check_resumable(
        SearchConfig.from_dict(record.config),
        config,
        f"--resume: {out} was searched with other settings ({{changed}}); use the same ones "
        "(only --ipcs may grow)",
        may_change=("ipcs",),
    )
    # More IPCs may be added on resume (a search extended in chunks); the ones already
    # begun must come first, in the same order, so that monotonicity sees the same history.
    begun = sorted(record.ipcs)
    if list(config.ipcs[: len(begun)]) != begun:
        raise ConfigError(
            f"--resume: --ipcs must start with the IPCs {out} has begun "
            f"({','.join(map(str, begun))}), got {','.join(map(str, config.ipcs))}"
        )
    # A search folder may have moved (a copy of --out, another machine): its winners' sets are
    # found again under the new --out.
    for ipc, entry in record.ipcs.items():
        moved = out / "sets" / f"ipc{ipc}"
        if entry.set_dir is not None and not Path(entry.set_dir).exists() and moved.is_dir():
            entry.set_dir = str(moved)
    record.config = config.to_dict()
    return record
