"""What a search's answer cost, stage by stage, from its record (``search_state.json``).

Stages: the precompute (experts and the difficulty score), the β trials and the random subset
beside them, the α trials and plain MTT beside them, SeqMatch's K trials, the final
evaluation, and the rest of the driver's wall time (starting Ray and MLflow, plots, the
winner's set). A Tune stage also gives the share of its trial slots left idle: 1 − its trials'
seconds / (slots × its wall time) — slots waiting for the end of a round of the concave
sampler, or for the last trial of a phase; with ``final_beside_search`` the full evaluations
run in those slots, so there they are not idle, only not the stage's.
"""

from __future__ import annotations

from dataclasses import dataclass

from selmatch_tune.results.record import SearchRecord, StageCost
from selmatch_tune.settings.phase_kinds import PHASES


def _stages() -> tuple[tuple[str, str], ...]:
    """The stages in the order a search runs them, with the name a table shows: the
    precompute, each registered phase's trials and the candidate beside them, the final
    evaluation."""
    stages = [("precompute", "precompute (experts, score)")]
    for kind in PHASES.values():
        stages.append((kind.name, kind.stage))
        if kind.candidate is not None:
            stages.append((f"{kind.name}_{kind.candidate[0]}", kind.candidate[1]))
    return (*stages, ("final", "final evaluation"))


STAGES = _stages()


@dataclass(frozen=True)
class CostRow:
    """One stage over every IPC: wall seconds, busy and idle slot-seconds (Tune stages)."""

    stage: str
    name: str
    seconds: float
    trial_seconds: float | None
    idle_slot_seconds: float | None


def stage_costs(record: SearchRecord) -> list[CostRow]:
    """The cost of every stage the record has timings of, summed over its IPCs, and the rest
    of the search's wall time (``other``) where the record has its total."""
    parts: dict[str, list[StageCost]] = {stage: [] for stage, _ in STAGES}
    if record.precompute is not None:
        parts["precompute"].append(record.precompute)
    for entry in record.ipcs.values():
        for name, kind in PHASES.items():
            phase = entry.phase(name)
            if phase is None:
                continue
            if phase.cost is not None:
                parts[name].append(phase.cost)
            candidate = getattr(phase, kind.candidate[0]) if kind.candidate else None
            if candidate is not None and candidate.cost:
                parts[f"{name}_{kind.candidate[0]}"].append(candidate.cost)
        if entry.final is not None and entry.final.cost is not None:
            parts["final"].append(entry.final.cost)
    rows = []
    for stage, name in STAGES:
        costs = parts[stage]
        if not costs:
            continue
        tune_stage = all(c.trial_seconds is not None and c.slots for c in costs)
        trial = sum(c.trial_seconds or 0.0 for c in costs) if tune_stage else None
        idle = sum(c.unused_slot_seconds or 0.0 for c in costs) if tune_stage else None
        rows.append(CostRow(stage, name, sum(c.seconds for c in costs), trial, idle))
    if record.seconds is not None and rows:
        rest = record.seconds - sum(row.seconds for row in rows)
        rows.append(
            CostRow("other", "other (Ray, MLflow, plots, sets)", max(rest, 0.0), None, None)
        )
    return rows


def format_costs(rows: list[CostRow]) -> str:
    """A Markdown table: wall seconds and share per stage, trial and idle slot-seconds."""
    total = sum(row.seconds for row in rows)
    lines = [
        "| stage | wall s | share | trial slot-s | slot-s not used by its trials (share) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        idle = "—"
        if row.idle_slot_seconds is not None and row.trial_seconds is not None:
            slots = row.idle_slot_seconds + row.trial_seconds
            share = row.idle_slot_seconds / slots if slots > 0 else 0.0
            idle = f"{row.idle_slot_seconds:.0f} ({100 * share:.0f} %)"
        trial = "—" if row.trial_seconds is None else f"{row.trial_seconds:.0f}"
        lines.append(
            f"| {row.name} | {row.seconds:.0f} | "
            f"{100 * row.seconds / total if total else 0:.0f} % | {trial} | {idle} |"
        )
    lines.append(f"| **total** | **{total:.0f}** | 100 % | | |")
    return "\n".join(lines)
