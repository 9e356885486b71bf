"""What a search leaves behind: the per-IPC table, curves, predictions, rank correlation."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selmatch.core.plots import save_curve
from selmatch.distillation.methods import method_of
from selmatch.evaluation.evaluate import EvalConfig
from selmatch_tune.results.record import IpcRecord, PhaseResult, SearchRecord
from selmatch_tune.settings.phase_kinds import ALPHA, phase_kind, refining_phases

COLUMNS = (
    "dataset",
    "ipc",
    "init",
    "beta",
    "beta_convention",
    "alpha",
    "short_val_accuracy",
    "short_test_accuracy",
    "final_test_mean",
    "final_test_std",
    "final_val_mean",
    "random_test_mean",
    "random_test_std",
    "random_short_val",
    "mtt_short_val",
    "beta_trials",
    "beta_grid_size",
    "alpha_trials",
    "alpha_grid_size",
    "method",
    "subsets",
    "seqmatch_experts",
    "seqmatch_short_val",
    "subsets_trials",
    "subsets_grid_size",
    "set_dir",
    "target_budget",
    "finalists",
    "fidelity_rank_correlation",
)


def columns() -> tuple[str, ...]:
    """The table's columns: :data:`COLUMNS`, then per refining phase (T+) the value the
    winner took (empty: it kept its own), its trials and grid size."""
    refined = tuple(
        f"{kind.name}{part}" for kind in refining_phases() for part in ("", "_trials", "_grid_size")
    )
    return COLUMNS + refined


def _refined(entry: IpcRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    taken = (entry.winner.refined if entry.winner else None) or {}
    for kind in refining_phases():
        phase = entry.phase(kind.name)
        if phase is not None:
            out[kind.name] = taken.get(kind.name, "")
            out[f"{kind.name}_trials"] = phase.trials
            out[f"{kind.name}_grid_size"] = len(phase.grid)
    return out


#: What an initialisation is called in the log and on the plots.
START = {"window": "the window", "random": "the random subset"}


def table_rows(dataset: str, convention: str, record: SearchRecord) -> list[dict[str, Any]]:
    """One row of ``best_hparams.csv`` per IPC whose final evaluation is done."""
    rows = []
    target = (
        EvalConfig.from_dict(record.config["final"]).budget() if "final" in record.config else ""
    )
    for ipc, entry in sorted(record.ipcs.items()):
        if entry.final is None:
            continue
        beta, final, alpha, subsets = entry.beta, entry.final, entry.alpha, entry.subsets
        winner, short = entry.winner, entry.winner_scores()
        assert beta is not None and entry.set_dir is not None and winner is not None
        random = final.random  # "" where the reference was not evaluated
        rows.append(
            {
                "dataset": dataset,
                "ipc": ipc,
                "init": winner.init,
                "beta": beta.best,
                "beta_convention": convention,
                "alpha": winner.alpha,
                "short_val_accuracy": short.val,
                "short_test_accuracy": short.test,
                "final_test_mean": final.test_mean,
                "final_test_std": final.test_std,
                "final_val_mean": final.val_mean,
                "random_test_mean": random.test_mean if random else "",
                "random_test_std": random.test_std if random else "",
                "random_short_val": beta.random.val if beta.random else "",
                # SeqMatch alone: no α phase
                "mtt_short_val": alpha.mtt.val if alpha and alpha.mtt else "",
                "beta_trials": beta.trials,
                "beta_grid_size": len(beta.grid),
                "alpha_trials": alpha.trials if alpha else 0,
                "alpha_grid_size": len(alpha.grid) if alpha else 0,
                "method": winner.method,
                "subsets": winner.subsets if winner.subsets is not None else "",
                "seqmatch_experts": (subsets.seqmatch_experts or "") if subsets else "",
                "seqmatch_short_val": subsets.best_point.val if subsets else "",
                "subsets_trials": subsets.trials if subsets else "",
                "subsets_grid_size": len(subsets.grid) if subsets else "",
                "set_dir": entry.set_dir,
                "target_budget": target,
                "finalists": len(final.finalists or {}),
                "fidelity_rank_correlation": (
                    ""
                    if final.fidelity_rank_correlation is None
                    else final.fidelity_rank_correlation
                ),
                **_refined(entry),
            }
        )
    return rows


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns())
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(rows: list[dict[str, Any]]) -> str:
    seqmatch = any(r.get("subsets_trials", "") != "" for r in rows)
    lines = [
        f"{'IPC':>5} {'method':>12} {'init':>7} {'beta':>6} {'alpha':>6} "
        f"{'short val %':>12} {'final test %':>15} {'random test %':>15} {'trials β':>9} "
        f"{'trials α':>9}" + (f" {'trials K':>9}" if seqmatch else "")
    ]
    for r in rows:
        trials = (
            f"{r['beta_trials']:>4}/{r['beta_grid_size']:<4} "
            f"{r['alpha_trials']:>4}/{r['alpha_grid_size']:<4}"
        )
        if seqmatch:
            trials += f" {r.get('subsets_trials', ''):>4}/{r.get('subsets_grid_size', ''):<4}"
        method = r.get("method", "selmatch")
        if method_of(method).sequential:
            method += f" K={r['subsets']}"
        method += "".join(
            f" {kind.symbol}={r[kind.name]}"
            for kind in refining_phases()
            if r.get(kind.name, "") != ""
        )
        random = (
            f"{100 * r['random_test_mean']:>8.2f} ± {100 * r['random_test_std']:<4.2f}"
            if r["random_test_mean"] != ""
            else f"{'–':>15}"
        )
        lines.append(
            f"{r['ipc']:>5} {method:>12} {r.get('init', 'window'):>7} {r['beta']:>6g} "
            f"{r['alpha']:>6g} "
            f"{100 * r['short_val_accuracy']:>12.2f} "
            f"{100 * r['final_test_mean']:>8.2f} ± {100 * r['final_test_std']:<4.2f} "
            f"{random} {trials}"
        )
    lines.append(
        "method: what made the winner (selmatch, plain mtt, or seqmatch with K "
        "subsets, trained on their union at evaluation); "
        "init: what the winner starts from, the window at β or the random subset "
        "(when it beat every window on validation, or plain MTT or SeqMatch won); "
        "trials β, α, K: trials run / grid values searched (re-evaluations of close "
        "tops count as trials; larger IPCs search only values ≤ the previous IPC's "
        "best); random test: a random class-balanced subset of the same size, "
        "trained like the winner"
        + (
            f"; final test: at the target budget ({rows[0]['target_budget']}), where the "
            "winner was chosen among the finalists (on validation)"
            if rows and rows[0].get("finalists")
            else ""
        )
    )
    return "\n".join(lines)


def below_random(rows: list[dict[str, Any]]) -> list[str]:
    """A warning for every IPC whose winner scores below the random subset of the same size.
    The random subset is one of the search's candidates, so the winner beat or tied it on
    validation at the trials' budget: what failed is that choice carrying over to the final
    budget and the test set (validation noise, or a short budget that ranks otherwise).
    Without an α phase (``--method seqmatch``) the random subset was no candidate."""
    candidate = (
        "it beat or tied that subset on validation at the trials' budget, and the "
        "choice did not hold at the final budget on test (docs/results.md, issue 19)"
    )
    alone = (
        "the random subset was no candidate of this search (--method seqmatch searches "
        "SeqMatch alone; --method both adds SelMatch, MTT and the random subset)"
    )
    return [
        f"WARNING: IPC {r['ipc']}: the searched set ({100 * r['final_test_mean']:.2f} % test) "
        f"scores below a random subset of the same size ({100 * r['random_test_mean']:.2f} %); "
        + (alone if r.get("alpha_grid_size", 1) == 0 else candidate)
        for r in rows
        if r["random_test_mean"] != "" and r["final_test_mean"] < r["random_test_mean"]
    ]


def save_phase_plot(
    path: Path, summary: PhaseResult, *, name: str, ipc: int, title: str, xlabel: str
) -> Path:
    """The phase's curve (validation and test at the short budget), its candidates beside
    the grid as dashed lines of the same colours (the random subset on the β curve, as the
    paper's Figure 3 draws it; plain MTT on the α curve; the α phase's winner on the K curve),
    the best grid value dotted."""
    xs = sorted(summary.curve)
    curve = summary.curve
    baselines = []
    for other, label in (
        (summary.random, "random subset"),
        (summary.mtt, "plain MTT"),
        (
            summary.against,
            "the winner before" if phase_kind(name).refines else "the α phase's winner",
        ),
    ):
        if other is not None:
            baselines += [(f"{label}, val", other.val), (f"{label}, test", other.test)]
    start = f", from {START[summary.init]}" if name == ALPHA.name and summary.init else ""
    return save_curve(
        xs,
        [
            ("val (short)", [curve[x].val for x in xs]),
            ("test (short)", [curve[x].test for x in xs]),
        ],
        path,
        xlabel=xlabel,
        title=f"{phase_kind(name).title} search, IPC {ipc}{start}\n{title}",
        best_x=summary.best,
        baselines=baselines,
    )


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN below 3 points."""
    if len(xs) < 3:
        return math.nan

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


def rank_correlations(record: SearchRecord) -> dict[int, float | None]:
    """Spearman's ρ of short vs full validation accuracy over the β points evaluated both ways,
    within each IPC ({IPC: ρ}; None below 3 points). Appendix E's claim is that short training
    *ranks the windows of one IPC* like full training; points of different IPCs are never
    pooled, since their accuracies differ by the IPC itself."""
    out: dict[int, float | None] = {}
    for ipc, entry in record.ipcs.items():
        points = list(entry.final.beta_full.values()) if entry.final else []
        rho = spearman([p.short_val for p in points], [p.full_val for p in points])
        out[ipc] = None if rho != rho else rho
    return out


def mean_rank_correlation(by_ipc: dict[int, float | None]) -> float | None:
    """The mean of the defined per-IPC correlations, or None."""
    values = [v for v in by_ipc.values() if v is not None]
    return sum(values) / len(values) if values else None


def predict(searched: dict[int, float], ipcs: Sequence[int]) -> dict[int, float]:
    """A monotone (non-increasing in IPC, as the paper observes) piecewise-linear fit in
    log IPC through the searched optima, constant beyond them. Unverified by construction."""
    known = sorted(searched.items())
    values: list[float] = []
    for _, value in known:  # enforce non-increasing
        values.append(min([value, *values[-1:]]))
    logs = [math.log(ipc) for ipc, _ in known]
    out = {}
    for ipc in ipcs:
        x = math.log(ipc)
        if x <= logs[0]:
            out[ipc] = values[0]
        elif x >= logs[-1]:
            out[ipc] = values[-1]
        else:
            k = next(i for i in range(1, len(logs)) if x <= logs[i])
            t = (x - logs[k - 1]) / (logs[k] - logs[k - 1])
            out[ipc] = values[k - 1] + t * (values[k] - values[k - 1])
    return out
