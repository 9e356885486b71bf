"""Do the full evaluations beside the search delay its α phase? (issue 34 item 5)

The same small search runs on a multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head with no CPU for work, ``--nodes`` worker nodes of 1 CPU)
in three ways, and each run's α-phase wall time (its Tune experiment, from the search record) is
compared with the α phase run alone:

- ``alone``: ``--final-after-phases``: an IPC's full evaluations run after its phases, so
  nothing runs beside its α phase (the baseline);
- ``beside``: the search as it is: the full evaluations wait on the driver
  (``selmatch_tune.flow.slots.FinalSlots``) and start only in the slots the search leaves;
- ``greedy``: as the search did before: each full evaluation submitted to Ray as soon as it is
  known (``FinalSlots`` with nothing reserved), taking any free slot.

The final evaluations are made long (``--final-epochs``) so that the ones known before the α
phase (the random reference, the top β windows) would overlap it.

    python benchmarks/finals_beside.py --max-concurrent 2 \
        --out benchmarks/results/finals_beside-mc2.json
    python benchmarks/finals_beside.py --max-concurrent 1 \
        --out benchmarks/results/finals_beside-mc1.json    # one slot to spare beside the search
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from selmatch_tune.flow import search as search_module
from selmatch_tune.flow.finals import final_slots
from selmatch_tune.flow.search import run_search
from selmatch_tune.flow.slots import FinalSlots
from selmatch_tune.search_alpha_beta import apply_sets
from selmatch_tune.settings.presets import smoke

MODES = ("alone", "beside", "greedy")
IPC = 4


def greedy_slots(config: Any) -> FinalSlots:
    """The search's full evaluations as they were before ``FinalSlots`` reserved anything."""
    pool = final_slots(config)
    pool.reserved = 0
    return pool


def run(mode: str, args: argparse.Namespace, parent: Path) -> dict[str, Any]:
    config = apply_sets(
        smoke(),
        [
            f"ipcs=[{IPC}]",
            "beta_grid=[0.0, 0.5]",
            "alpha_grid=[0.0, 0.5, 1.0]",
            f"max_concurrent={args.max_concurrent}",
            "gpus_per_trial=0",
            "full_eval_top=2",
            f"final.train.epochs={args.final_epochs}",
            f"final.num_seeds={args.final_seeds}",
            f"distill.iterations={args.iterations}",
            "distill.checkpoint_every=1000",
            f"final_beside_search={'false' if mode == 'alone' else 'true'}",
        ],
    )
    original = search_module.final_slots
    if mode == "greedy":
        search_module.final_slots = greedy_slots
    started = time.perf_counter()
    try:
        run_search(config, parent / mode, log=lambda *_: None)
    finally:
        search_module.final_slots = original
    state = json.loads((parent / mode / "search_state.json").read_text())
    entry = state["ipcs"][str(IPC)]
    return {
        "mode": mode,
        "alpha_seconds": entry["alpha"]["cost"]["seconds"],
        "beta_seconds": entry["beta"]["cost"]["seconds"],
        "search_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of 1 CPU (default 2)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        help="the search's trials at once (default 2: no slot to spare)",
    )
    parser.add_argument(
        "--final-epochs",
        type=int,
        default=3000,
        help="epochs of each full evaluation (default 3000: tens of seconds, "
        "longer than an α trial)",
    )
    parser.add_argument("--final-seeds", type=int, default=1)
    parser.add_argument(
        "--iterations",
        type=int,
        default=60,
        help="distillation iterations of an α trial (default 60)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each mode, interleaved (default 2)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + ", ".join(MODES)
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            # one cache for all (the first run trains the experts); the modes interleaved
            for repeat, mode in [(r, m) for r in range(args.repeats) for m in modes]:
                row = run(mode, args, Path(folder) / str(repeat)) | {"repeat": repeat}
                rows.append(row)
                print(
                    f"{mode:>7}: α phase {row['alpha_seconds']:.1f} s, β phase "
                    f"{row['beta_seconds']:.1f} s, "
                    f"search {row['search_seconds']:.1f} s"
                )
    finally:
        ray.shutdown()
        cluster.shutdown()
    mean = {m: statistics.mean(r["alpha_seconds"] for r in rows if r["mode"] == m) for m in modes}
    ratios = {m: mean[m] / mean["alone"] for m in modes} if "alone" in mean else {}
    for mode, ratio in ratios.items():
        print(f"α phase, {mode} / alone: {ratio:.2f}x (mean of {args.repeats}: {mean[mode]:.1f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "finals_beside",
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
                    "nodes": args.nodes,
                    "max_concurrent": args.max_concurrent,
                    "final_epochs": args.final_epochs,
                    "iterations": args.iterations,
                    "repeats": args.repeats,
                    "rows": rows,
                    "alpha_mean_seconds": mean,
                    "alpha_ratio_to_alone": ratios,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
