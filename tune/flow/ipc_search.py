"""One IPC's search as one object: :meth:`IpcSearch.run` reads as its steps,
``β phase → the random subset beside it → α phase (plain MTT beside it) → K phase → what
finishes the IPC``; each step runs once (the record says which have run) and is saved as it
ends, so a resumed search takes up where it stopped.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from selmatch.distillation.distill import draw
from selmatch.distillation.methods import method_of
from selmatch.selection.initial import RandomInit, WindowInit
from selmatch_tune.flow.finals import (
    EarlyFinal,
    collect_winner,
    finish_ipc,
    random_reference,
    submit_windows,
)
from selmatch_tune.flow.phases import Phase, SearchContext, bounded, run_baseline, run_phase
from selmatch_tune.flow.precompute import Precomputed
from selmatch_tune.flow.slots import FinalSlots
from selmatch_tune.flow.trials import TrialSpec
from selmatch_tune.results.outputs import START
from selmatch_tune.results.record import (
    Baseline,
    Candidate,
    IpcRecord,
    PhaseResult,
    Point,
    Score,
    SearchRecord,
    Winner,
)
from selmatch_tune.settings.config import SearchConfig
from selmatch_tune.settings.phase_kinds import ALPHA, BETA, SUBSETS, PhaseKind, refining_phases


def fixed_settings(config: SearchConfig, pre: Precomputed, ipc: int) -> TrialSpec:
    """What every trial of an IPC shares; each phase replaces what is its own."""
    return TrialSpec(
        ipc=ipc,
        beta_convention=config.beta_convention,
        score=config.score,
        val_fraction=pre.split.val_fraction,
        split_seed=pre.split.seed,
        cpus_per_trial=config.cpus_per_trial,
        gpus_per_trial=config.gpus,
        evaluation=config.short,
    )


def beta_winner(beta: PhaseResult) -> str:
    """``"random"`` when the random subset beats the best window on validation, else
    ``"window"`` (a tie keeps the window: the method's own initialisation)."""
    assert beta.random is not None
    return "random" if beta.random.val > beta.best_point.val else "window"


@dataclass
class IpcSearch:
    """The search at one IPC. ``bounds``: the monotone rule's bounds on β and α (the previous
    IPC's bests), ``None`` where there is none."""

    ctx: SearchContext
    pre: Precomputed
    record: SearchRecord
    slots: FinalSlots
    ipc: int
    bounds: tuple[float | None, float | None] = (None, None)
    early: EarlyFinal = field(default_factory=EarlyFinal)

    @property
    def entry(self) -> IpcRecord:
        return self.record.at(self.ipc)

    @property
    def fixed(self) -> TrialSpec:
        return fixed_settings(self.ctx.config, self.pre, self.ipc)

    def log(self, text: str) -> None:
        self.ctx.log(f"IPC {self.ipc}: {text}")

    def run(self) -> Callable[[], None]:
        """β search (and the random subset beside it), α search from the β phase's winner (and
        plain MTT beside it), the K search: each step once (recorded). Returns what finishes
        the IPC, its full evaluation, whose evaluations already known run beside the search
        (:class:`EarlyFinal`) and are awaited when it is called: after the last IPC's
        search."""
        config, entry = self.ctx.config, self.entry
        beside = config.final_beside_search
        if (
            beside
            and config.random_reference
            and (entry.final is None or entry.final.random is None)
        ):
            self.early.reference = random_reference(config, self.ctx.data, self.fixed, self.slots)
        if entry.beta is None:
            self._step(self._beta)
        if beside and entry.final is None:
            assert entry.beta is not None
            self.early.windows = submit_windows(
                config, entry.beta, self.ctx.data, self.fixed, self.slots
            )
        # a search begun before the random candidate existed keeps the α phase it has
        if entry.alpha is None and entry.beta is not None and entry.beta.random is None:
            self._step(self._random_subset)
        if entry.alpha is None and config.searches(ALPHA):
            self._step(self._alpha)
        if entry.subsets is None and config.searches(SUBSETS):
            self._step(self._subsets)
        for kind in refining_phases():
            if kind.grid(config) and entry.phase(kind.name) is None and entry.final is None:
                self._step(partial(self._refine, kind))
        if entry.final is None:
            also = " and of a random subset of the same size" if self.early.reference else ""
            which = (
                f"of the {len(entry.candidates)} finalists (the winner is chosen there)"
                if config.finalists and entry.candidates
                else "of the winner"
            )
            self.log(
                f"final evaluation ({config.final.budget()}, {config.final.num_seeds} "
                f"seeds) {which}, of the top {config.full_eval_top} β windows{also}"
                + (", beside the search" if beside else "")
            )
        ctx = self.ctx
        return partial(
            finish_ipc,
            self.ipc,
            config,
            entry,
            ctx.data,
            self.fixed,
            self.early,
            self.slots,
            self.record,
            ctx.out,
            ctx.tracker,
            ctx.log,
            self.selection_set,
        )

    def _step(self, step: Callable[[], None]) -> None:
        step()
        self.record.save(self.ctx.out)

    def _beta(self) -> None:
        bound = self.bounds[0]
        phase = Phase(
            BETA.name, self.ipc, bounded(BETA.grid(self.ctx.config), bound), self.fixed, (), bound
        )
        self.entry.beta, _ = run_phase(phase, self.ctx)

    def _random_subset(self) -> None:
        """The random class-balanced subset as a β-phase candidate, as many times as a close
        top is evaluated; where the α phase starts."""
        config, beta = self.ctx.config, self.entry.beta
        assert beta is not None
        repeats = 1 + config.top_repeats  # as many as a close top gets
        self.log(
            f"the random class-balanced subset as a β-phase candidate ({repeats} "
            "evaluation(s), the windows' budget)"
        )
        beta.random, _ = run_baseline(
            f"beta-random-ipc{self.ipc}",
            BETA.name,
            BETA.trial,
            self.fixed.replace(init="random"),
            repeats,
            self.ctx,
        )
        beta.init = beta_winner(beta)
        self._keep_selections()
        then = (
            f"the α phase starts from {START[beta.init]}"
            if config.searches(ALPHA)
            else "no α phase (--method seqmatch)"
        )
        self.log(
            f"random subset val {100 * beta.random.val:.2f} % vs the best window "
            f"(β = {beta.best:g}) {100 * beta.best_point.val:.2f} %: {then}"
        )

    def _distill_fixed(self) -> TrialSpec:
        """What every distillation trial of the IPC shares: the β phase's best β, the
        matching settings, the experts' and where the precompute cached them (the set's
        provenance)."""
        assert self.entry.beta is not None
        config = self.ctx.config
        return self.fixed.replace(
            beta=self.entry.beta.best,
            distill=config.distill,
            experts=config.experts,
            layout=self.pre.layout.to_dict(),
            experts_dir=str(self.pre.cache_dir),
        )

    def _alpha(self) -> None:
        """The α phase from the β phase's winner (its grid's 0 and 1 always evaluated), plain
        MTT beside it when it starts from a window, and the winner's set collected."""
        config, entry = self.ctx.config, self.entry
        assert entry.beta is not None
        init = entry.beta.init or "window"
        alpha_fixed = self._distill_fixed().replace(init=init)
        anchors = tuple(a for a in (0.0, 1.0) if a in config.alpha_grid)
        grid = tuple(sorted({*bounded(ALPHA.grid(config), self.bounds[1]), *anchors}))
        phase = Phase(
            ALPHA.name, self.ipc, grid, alpha_fixed, anchors, self.bounds[1], entry.measured_noise()
        )
        alpha, results = run_phase(phase, self.ctx)
        entry.alpha = alpha
        alpha.init = init
        winner = Winner(init=init, alpha=alpha.best, candidate="alpha")
        self._keep_selections()  # a search resumed from before finalists existed
        learned = sorted((a for a in alpha.curve if a > 0), key=lambda a: -alpha.curve[a].val)
        for a in learned[: config.finalists]:
            point = alpha.curve[a]
            self._keep(Winner(init=init, alpha=a, candidate="alpha"), point, results, a)
        if init == WindowInit.kind and config.mtt_candidate:
            self.log("plain MTT (the random subset, α = 1) as an α-phase candidate")
            alpha.mtt, mtt_results = run_baseline(
                f"alpha-mtt-ipc{self.ipc}",
                ALPHA.name,
                ALPHA.trial,
                alpha_fixed.replace(init="random", alpha=1.0),
                1,
                self.ctx,
            )
            best_val = alpha.best_point.val
            self.log(
                f"plain MTT val {100 * alpha.mtt.val:.2f} % vs the best α "
                f"({alpha.best:g}) {100 * best_val:.2f} %"
            )
            mtt = Winner(init="random", alpha=1.0, candidate="mtt")
            self._keep(mtt, alpha.mtt, mtt_results, 1.0)
            if alpha.mtt.val > best_val:
                winner, results = mtt, mtt_results
        entry.winner = winner
        self.log(
            f"the winner starts from {START[winner.init]}"
            + (f" (β = {entry.beta.best:g})" if winner.init == WindowInit.kind else "")
            + f", α = {winner.alpha:g}"
            + (" (plain MTT)" if winner.plain_mtt else "")
        )
        entry.set_dir = str(collect_winner(results, winner.alpha, self._sets))

    @property
    def _sets(self) -> Path:
        return self.ctx.out / "sets" / f"ipc{self.ipc}"

    def _subsets(self) -> None:
        """SeqMatch as an alternative to the α phase: K from ``subsets_grid`` (values ≤ the
        IPC), every trial a SeqMatch distillation from the random subset evaluated like an α
        trial; its best replaces the α phase's winner (and its set) when it scores higher on
        validation, or is the winner when the α phase does not run (``methods`` without
        selmatch)."""
        config, entry = self.ctx.config, self.entry
        grid = tuple(k for k in SUBSETS.grid(config) if k <= self.ipc)
        if not grid:
            self.log(
                f"no K of --subsets-grid {list(config.subsets_grid)} fits IPC "
                f"{self.ipc}: SeqMatch not searched here"
            )
            return
        subsets, results = run_phase(
            Phase(
                SUBSETS.name, self.ipc, grid, self._seqmatch_fixed(), noise=entry.measured_noise()
            ),
            self.ctx,
        )
        entry.subsets = subsets
        subsets.seqmatch_experts = config.seqmatch_experts
        best, seq_val = subsets.best, subsets.best_point.val
        seqmatch = Winner(init="random", alpha=1.0, candidate="seqmatch", subsets=int(best))
        self._keep(seqmatch, subsets.best_point, results, best, SUBSETS.name)
        if entry.winner is not None:
            other = entry.winner_scores()
            subsets.against = Score(val=other.val, test=other.test)
            self.log(
                f"SeqMatch (K = {best:g}) val {100 * seq_val:.2f} % vs the α phase's "
                f"winner {100 * other.val:.2f} %"
            )
            if seq_val <= other.val:  # a tie keeps SelMatch, the search's own method
                return
        entry.winner = seqmatch
        self.log(
            f"the winner is SeqMatch with K = {best:g} subsets "
            f"({config.seqmatch_experts} stage experts)"
        )
        entry.set_dir = str(collect_winner(results, best, self._sets, searched=SUBSETS.name))

    def _seqmatch_fixed(self) -> TrialSpec:
        """What every SeqMatch trial of the IPC shares. Its learnable lr starts at its own
        default (MTT's 0.01) unless --override distill.lr_init set one; it starts from the
        random subset and learns every image."""
        config = self.ctx.config
        return self._distill_fixed().replace(
            method="seqmatch",
            init="random",
            alpha=1.0,
            seqmatch_experts=config.seqmatch_experts,
            stage_parallel=config.stage_slots,
        )

    def _winner_spec(self) -> TrialSpec:
        """The trial that made the IPC's winner, with the values earlier refining phases gave
        it: what a refining phase's trials vary."""
        winner = self.entry.winner
        assert winner is not None
        if method_of(winner.method).sequential:
            spec = self._seqmatch_fixed().replace(subsets=winner.subsets)
        else:
            spec = self._distill_fixed().replace(init=winner.init, alpha=winner.alpha)
        for name, value in (winner.refined or {}).items():
            spec = spec.with_value(name, value)
        return spec

    def _refine(self, kind: PhaseKind) -> None:
        """A phase that refines the winner (:attr:`PhaseKind.refines`): every trial the
        winner's distillation with the searched value set; the winner (and its set) takes the
        best value when it beats the winner on validation. A winner that learned nothing
        (α = 0) is a selection, which no matching setting changes: the phase is skipped."""
        entry, grid = self.entry, tuple(kind.grid(self.ctx.config))
        winner = entry.winner
        if winner is None or entry.selected_as_is() is not None:
            self.log(f"the winner learned nothing (α = 0): no {kind.shown} phase")
            return
        spec, noise = self._winner_spec(), entry.measured_noise()
        result, results = run_phase(Phase(kind.name, self.ipc, grid, spec, noise=noise), self.ctx)
        before = entry.winner_scores()
        result.against = Score(val=before.val, test=before.test)
        entry.set_phase(kind.name, result)
        value, val = result.best, result.best_point.val
        self.log(
            f"best {kind.symbol} = {value:g}: val {100 * val:.2f} % vs the winner's "
            f"{100 * before.val:.2f} %"
        )
        if val <= before.val:  # a tie keeps the winner as it was
            return
        winner.refined = {**(winner.refined or {}), kind.name: value}
        self.log(f"the winner takes {kind.symbol} = {value:g}")
        self._keep(Winner.from_dict(winner.to_dict()), result.best_point, results, value, kind.name)
        entry.set_dir = str(collect_winner(results, value, self._sets, searched=kind.name))

    def _keep(
        self,
        winner: Winner,
        short: Point | Baseline,
        results: Any,
        value: float,
        searched: str = "",
    ) -> None:
        """Keep a candidate for the decision at the target budget (``--finalists``): its
        short-budget scores and its set, copied from the trial that made it (the best of its
        value's repeats) to ``sets/ipcN/candidates/``."""
        if not self.ctx.config.finalists:
            return
        label = winner.label()
        folder = self._sets.parent / f"ipc{self.ipc}-candidates" / _slug(label)
        collect_winner(results, value, folder, searched=searched or ALPHA.name)
        score = Score(val=short.val, test=short.test)
        self.entry.add_candidate(label, Candidate(winner=winner, short=score, set_dir=str(folder)))

    def _keep_selections(self) -> None:
        """The random subset and the window at the β phase's best as candidates (their sets
        are written only if one wins)."""
        beta = self.entry.beta
        if not self.ctx.config.finalists or beta is None or beta.random is None:
            return
        for init, point in ((RandomInit.kind, beta.random), (WindowInit.kind, beta.best_point)):
            winner = Winner(init=init, alpha=0.0, candidate="alpha")
            score = Score(val=point.val, test=point.test)
            self.entry.add_candidate(winner.label(beta.best), Candidate(winner=winner, short=score))

    def selection_set(self, winner: Winner, folder: Path) -> Path:
        """Write the set of a selection that won at the target budget (the random subset or
        the window at β): an α = 0 distillation, as an α = 0 trial makes it, on the driver."""
        from selmatch_tune.flow.trials import distill_set, fetch_data

        spec = self._distill_fixed().replace(init=winner.init, alpha=0.0)
        if folder.exists():
            shutil.rmtree(folder)
        distill_set(spec, self.ctx.data, fetch_data(spec, self.ctx.data), folder)
        draw(folder)
        return folder


def _slug(label: str) -> str:
    """A folder name for a candidate's label."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", label).strip("-")
