"""How many trials the concave-aware search spends, how good its pick is, and what Ray costs.

    python benchmarks/search_efficiency.py                            # simulated + recorded curves
    python benchmarks/search_efficiency.py --search-dir runs/<search>  # + Ray overhead of a search

1. **Noisy concave curves** (simulated; the same bookkeeping as Tune, with P trials in flight):
   trials used as a share of the grid, and how often the pick is within one grid step of the
   grid's best — next to evaluating the whole grid once with the same noise (the baseline).
2. **Real Fashion-MNIST β curves evaluated exhaustively** (`experiments/results/sweep-*`:
   every β of a 10-point grid, 2 seeds): the search replayed on the measured means with the
   measured seed noise; accuracy gap between its pick and the grid's best.
3. **Ray's per-trial overhead** in a finished search: seconds spent fetching the precomputed
   data from the object store and scheduling/starting trials, as a share of trial time.
4. **The search's cost by stage** (`--search-dir`, from its record: precompute, β trials,
   α trials, their baselines, the final evaluation, idle slots); with `--baseline-dir`, a
   search of the same settings made before a change: the ratio of their wall times and whether
   the winners (method, initialisation, β, α per IPC) are the same.
5. **Deciding at the short budget or at the target budget** (simulated, with a fidelity model
   measured on the Fashion-MNIST study: `experiments/results/fmnist-study-v3`): per IPC, its
   candidates' short-budget validation scores (the search's record) against their validation
   scores at the study's budget (its results.csv) give the spread of the candidates at the
   target budget and the rank-flipping noise of the short budget (the residual after their mean
   offset). Simulated candidates (an α grid with its baselines) get target scores with that
   spread and short scores with that noise; the old search takes the best short score, the new
   one evaluates the finalists (the baselines and the best ``--finalists`` α values) at the
   target budget with 2 seeds and takes the best there. Reported: the target-budget accuracy
   each gives up against the best candidate (regret), how often each picks it, and the target
   evaluations each spends.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
from pathlib import Path

from selmatch_tune.flow.simulate import random_concave_curve, simulate
from selmatch_tune.results.costs import format_costs, stage_costs
from selmatch_tune.results.outputs import spearman
from selmatch_tune.results.record import SearchRecord

#: the columns of best_hparams.csv that say what won
WINNER_COLUMNS = ("ipc", "method", "init", "beta", "alpha", "subsets")

ROOT = Path(__file__).resolve().parents[1]


def grid(n: int) -> list[float]:
    return [round(i / (n - 1), 6) for i in range(n)]


def simulated(sizes: list[int], parallels: list[int], noise: float, runs: int) -> list[dict]:
    rows = []
    for size in sizes:
        values = grid(size)
        for parallel in parallels:
            rng = random.Random(size * 100 + parallel)
            hits = whole_hits = 0
            counts = []
            for seed in range(runs):
                curve = random_concave_curve(values, rng)
                result = simulate(curve, values, parallel=parallel, noise=noise, seed=seed)
                best = values.index(max(values, key=curve))
                hits += abs(values.index(result.pick) - best) <= 1
                draw = random.Random(seed)
                noisy = {v: curve(v) + draw.gauss(0.0, noise) for v in values}
                whole_hits += abs(values.index(max(values, key=noisy.__getitem__)) - best) <= 1
                counts.append(result.trials)
            rows.append(
                {
                    "grid": size,
                    "parallel": parallel,
                    "runs": runs,
                    "mean_trials": statistics.mean(counts),
                    "share_of_grid": statistics.mean(counts) / size,
                    "within_one_step": hits / runs,
                    "whole_grid_within_one_step": whole_hits / runs,
                }
            )
    return rows


def replay_sweeps(parallels: list[int], repeats: int) -> list[dict]:
    rows = []
    for path in sorted((ROOT / "experiments" / "results").glob("sweep-*/sweep.json")):
        sweep = json.loads(path.read_text())
        betas = sorted(float(b) for b in sweep["rows"])
        means = {b: sweep["rows"][str(b)]["val_mean"] for b in betas}
        stds = [sweep["rows"][str(b)]["val_std"] for b in betas]
        noise = statistics.mean(stds)
        best = max(betas, key=means.__getitem__)
        for parallel in parallels:
            gaps, counts = [], []
            for seed in range(repeats):
                curve = means.__getitem__
                result = simulate(curve, betas, parallel=parallel, noise=noise, seed=seed)
                gaps.append(means[best] - means[result.pick])
                counts.append(result.trials)
            rows.append(
                {
                    "sweep": path.parent.name,
                    "grid": len(betas),
                    "parallel": parallel,
                    "noise": noise,
                    "mean_trials": statistics.mean(counts),
                    "grid_best": best,
                    "mean_gap_points": 100 * statistics.mean(gaps),
                    "max_gap_points": 100 * max(gaps),
                }
            )
    return rows


#: the study's candidates per IPC: its results.csv method → how the search record names it
STUDY = ROOT / "experiments" / "results" / "fmnist-study-v3"


def measured_fidelity() -> dict:
    """From the study: per IPC, each candidate's short-budget validation score (the search's
    record: the random subset, the window at β = α 0, the α phase's best as SelMatch, plain
    MTT) beside its validation score at the study's budget (results.csv); the spread of the
    target scores, the short budget's rank-flipping noise (the std of the differences after
    their mean offset), and the seed noise at the target budget (the mean std over seeds)."""
    record = SearchRecord.load(STUDY)
    with open(STUDY / "results.csv") as handle:
        table = {(r["method"], int(r["ipc"])): r for r in csv.DictReader(handle)}
    spreads, flips, seeds, ipcs = [], [], [], {}
    for ipc, entry in sorted(record.ipcs.items()):
        assert entry.beta is not None and entry.alpha is not None and entry.beta.random
        short = {
            "random": entry.beta.random.val,
            "window": entry.alpha.curve[0.0].val,
            "distill-selmatch": entry.alpha.best_point.val,
        }
        if entry.alpha.mtt is not None:
            short["distill-mtt"] = entry.alpha.mtt.val
        target = {m: float(table[(m, ipc)]["val_mean"]) for m in short}
        ds = [short[m] - statistics.fmean(short.values()) for m in short]
        dt = [target[m] - statistics.fmean(target.values()) for m in short]
        spreads.append(statistics.pstdev(dt))
        flips.append(statistics.pstdev([a - b for a, b in zip(ds, dt, strict=True)]))
        seeds += [float(table[(m, ipc)]["test_std"]) for m in short]
        ipcs[ipc] = {
            "short": short,
            "target": target,
            "spearman": spearman(list(short.values()), list(target.values())),
        }
    return {
        "ipcs": ipcs,
        "target_spread": statistics.fmean(spreads),
        "flip_noise": statistics.fmean(flips),
        "seed_noise": statistics.fmean(seeds),
    }


def decide(fidelity: dict, runs: int, alphas: int = 10, finalists: int = 2, seeds: int = 2) -> dict:
    """Old (best short score) against new (the finalists at the target budget) on simulated
    candidates: ``alphas`` α values and three baselines (the random subset, the window, plain
    MTT), target scores ~ N(0, spread), short = target + N(0, flip noise), a target-budget
    evaluation = target + N(0, seed noise / √seeds)."""
    spread, flip, noise = fidelity["target_spread"], fidelity["flip_noise"], fidelity["seed_noise"]
    regret: dict[str, list[float]] = {"old": [], "new": []}
    hits = {"old": 0, "new": 0}
    evaluated = []
    for run in range(runs):
        rng = random.Random(run)  # the same candidates whatever the number of finalists
        target = [rng.gauss(0.0, spread) for _ in range(alphas + 3)]
        short = [t + rng.gauss(0.0, flip) for t in target]
        best = max(range(len(target)), key=target.__getitem__)
        old = max(range(len(short)), key=short.__getitem__)
        ranked = sorted(range(3, len(short)), key=lambda i: -short[i])  # the α values
        chosen = [0, 1, 2, *ranked[:finalists]]
        measured = {i: target[i] + rng.gauss(0.0, noise / math.sqrt(seeds)) for i in chosen}
        new = max(chosen, key=measured.__getitem__)
        for name, pick in (("old", old), ("new", new)):
            regret[name].append(target[best] - target[pick])
            hits[name] += pick == best
        evaluated.append(len(chosen))
    return {
        "runs": runs,
        "candidates": alphas + 3,
        "finalists": finalists,
        "seeds": seeds,
        "old_regret_points": 100 * statistics.fmean(regret["old"]),
        "new_regret_points": 100 * statistics.fmean(regret["new"]),
        "old_picks_best": hits["old"] / runs,
        "new_picks_best": hits["new"] / runs,
        # target-budget evaluations: the old search's winner and random reference; the new
        # one's finalists (the reference is the random subset's)
        "old_target_evaluations": 2 * seeds,
        "new_target_evaluations": statistics.fmean(evaluated) * seeds,
    }


def ray_overhead(search_dir: Path) -> dict:
    """Trial time split into fetching the data, working, and everything else Ray does."""
    fetch = work = total = slots = 0.0
    trials = 0
    concurrency = json.loads((search_dir / "search_state.json").read_text())["config"][
        "max_concurrent"
    ]
    for phase in search_dir.glob("ray/*-ipc*"):
        spans = []
        for result in phase.glob("*/result.json"):
            last = json.loads(result.read_text().strip().splitlines()[-1])
            fetch += last["fetch_seconds"]
            work += last["work_seconds"]
            total += last["time_total_s"]
            spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
            trials += 1
        if spans:  # wall time of the phase, times the trial slots it had
            slots += (max(e for _, e in spans) - min(s for s, _ in spans)) * concurrency
    return {
        "trials": trials,
        "fetch_seconds": fetch,
        "work_seconds": work,
        "trial_seconds": total,
        "slot_seconds": slots,
        "fetch_share": fetch / total if total else None,
        "outside_work_share": (total - work) / total if total else None,
        "slot_utilisation": work / slots if slots else None,
    }


def winners(search_dir: Path) -> list[dict[str, str]]:
    with open(search_dir / "best_hparams.csv") as handle:
        return [{k: row.get(k, "") for k in WINNER_COLUMNS} for row in csv.DictReader(handle)]


def stage_report(search_dir: Path, baseline_dir: Path | None) -> dict:
    """The stage table of a search and, against a baseline search, the wall-time ratio and
    whether the winners held."""
    record = SearchRecord.load(search_dir)
    rows = stage_costs(record)
    report: dict = {
        "search": str(search_dir),
        "seconds": record.seconds,
        "stages": [vars(row) for row in rows],
        "table": format_costs(rows),
        "winners": winners(search_dir),
    }
    if baseline_dir is not None:
        before = SearchRecord.load(baseline_dir)
        base_rows = stage_costs(before)
        report |= {
            "baseline": str(baseline_dir),
            "baseline_seconds": before.seconds,
            "baseline_table": format_costs(base_rows),
            "speedup": (before.seconds or 0) / (record.seconds or float("nan")),
            "baseline_winners": winners(baseline_dir),
        }
        report["same_winners"] = report["winners"] == report["baseline_winners"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,20,40")
    parser.add_argument("--parallel", default="1,2,4")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0005,
        help="seed noise of a trial on a curve spanning 0.10 (default 0.0005)",
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--search-dir", type=Path, default=None)
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        default=None,
        help="a search of the same settings before a change (needs "
        "--search-dir): wall-time ratio and whether the winners held",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    parallels = [int(p) for p in args.parallel.split(",")]
    fidelity = measured_fidelity()
    report: dict = {
        "simulated": simulated(sizes, parallels, args.noise, args.runs),
        "real_sweeps": replay_sweeps(parallels, args.runs),
        "fidelity": fidelity,
        "decision": [decide(fidelity, 10 * args.runs, finalists=k) for k in (1, 2, 4)],
    }
    print(f"1. noisy concave curves (noise std {args.noise}, {args.runs} curves each)")
    header = ("grid", "P", "trials", "share", "pick ±1 step", "whole grid ±1")
    print("{:>5} {:>3} {:>7} {:>6} {:>13} {:>14}".format(*header))
    for r in report["simulated"]:
        print(
            f"{r['grid']:>5} {r['parallel']:>3} {r['mean_trials']:>7.2f} "
            f"{r['share_of_grid']:>6.0%} {r['within_one_step']:>13.0%} "
            f"{r['whole_grid_within_one_step']:>14.0%}"
        )
    print(
        "\n2. recorded Fashion-MNIST β sweeps (validation accuracy, replayed with their seed noise)"
    )
    for r in report["real_sweeps"]:
        gap = f"mean {r['mean_gap_points']:.2f}, max {r['max_gap_points']:.2f} points"
        print(
            f"{r['sweep']:<28} P={r['parallel']} trials {r['mean_trials']:.2f}/{r['grid']}, "
            f"gap to the grid's best: {gap}"
        )
    print(
        f"\n5. deciding at the short or the target budget: measured on the study "
        f"(IPCs {', '.join(map(str, fidelity['ipcs']))}): spread of the candidates at the "
        f"target budget {100 * fidelity['target_spread']:.2f} points, the short budget's "
        f"rank-flipping noise {100 * fidelity['flip_noise']:.2f} points, seed noise "
        f"{100 * fidelity['seed_noise']:.2f} points; within-IPC Spearman of short vs target: "
        + ", ".join(f"{ipc}: {v['spearman']:.2f}" for ipc, v in fidelity["ipcs"].items())
    )
    for d in report["decision"]:
        print(
            f"  {d['candidates']} candidates, {d['finalists']} α finalist(s) + 3 baselines, "
            f"{d['seeds']} seeds: regret at the target budget {d['old_regret_points']:.2f} "
            f"points (old: the best short score) vs {d['new_regret_points']:.2f} (new); best "
            f"picked {d['old_picks_best']:.0%} vs {d['new_picks_best']:.0%}; target "
            f"evaluations {d['old_target_evaluations']:.0f} vs {d['new_target_evaluations']:.0f} "
            f"({d['new_target_evaluations'] / d['old_target_evaluations']:.1f}x)"
        )
    if args.search_dir:
        report["ray_overhead"] = ray_overhead(args.search_dir)
        o = report["ray_overhead"]
        print(
            f"\n3. Ray overhead in {args.search_dir}: {o['trials']} trials, "
            f"fetching data {o['fetch_share']:.1%} of trial time, everything but the work "
            f"{o['outside_work_share']:.1%}; work fills {o['slot_utilisation']:.0%} of the "
            "trial slots' wall time (the rest: scheduling, trial start-up, and waiting while "
            "the search has no useful point to propose)"
        )
    if args.search_dir:
        stages = report["stages"] = stage_report(args.search_dir, args.baseline_dir)
        print(f"\n4. cost by stage of {args.search_dir}\n{stages['table']}")
        if args.baseline_dir:
            print(f"\nbaseline {args.baseline_dir}:\n{stages['baseline_table']}")
            print(
                f"\nwall time: {stages['baseline_seconds']:.0f} s before, "
                f"{stages['seconds']:.0f} s now: {stages['speedup']:.2f}x; winners "
                f"{'the same' if stages['same_winners'] else 'DIFFERENT'}: "
                f"{stages['winners']}"
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
