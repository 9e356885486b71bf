"""Concurrent trials on a Ray cluster: throughput against one trial at a time, and Ray's
per-trial overhead (scheduling, process start, object-store reads) against the trial's work.

The same fixed set of real β trials (a window subset of Fashion-MNIST + a short training, the
search's own trainable with its precomputed data in the object store) runs with
``max_concurrent_trials`` = 1, then 2, 3, ...; the baseline (1) is measured in the same run.

    python benchmarks/trial_scaling.py                                   # a local Ray
    cluster/local_cluster.sh start             # or on the local multi-node cluster:
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=.ray-local/auth_token \
      python benchmarks/trial_scaling.py --address "$(cat .ray-local/address)"
    cluster/local_cluster.sh stop

On a machine with C cores, more than C trials at once cannot go faster (the nodes of the local
multi-node cluster share this machine's cores); the table says what concurrency buys here.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from selmatch_tune.flow.search import fixed_settings, precompute_all, trial_data
from selmatch_tune.flow.trials import TrialSpec, beta_trial
from selmatch_tune.settings.presets import quick

ROOT = Path(__file__).resolve().parents[1]


def run_batch(trainable, fixed: TrialSpec, betas: list[float], parallel: int, storage: str) -> dict:
    started = time.perf_counter()
    grid = tune.Tuner(
        trainable,
        param_space={**fixed.to_dict(), "beta": tune.grid_search(betas)},
        tune_config=tune.TuneConfig(max_concurrent_trials=parallel, reuse_actors=True),
        run_config=tune.RunConfig(name=f"scaling-p{parallel}", storage_path=storage, verbose=0),
    ).fit()
    wall = time.perf_counter() - started
    trials = [grid[i] for i in range(len(grid))]  # a ResultGrid is indexed, not iterated
    results = [r.metrics for r in trials if r.error is None and r.metrics]
    if len(results) != len(betas):
        raise RuntimeError(f"{len(betas) - len(results)} trial(s) failed at P={parallel}")
    work = sum(m["work_seconds"] for m in results)
    fetch = sum(m["fetch_seconds"] for m in results)
    slots = min(parallel, len(results)) * wall  # slots that had a trial to run
    return {
        "parallel": parallel,
        "trials": len(results),
        "wall_s": wall,
        "trials_per_minute": 60 * len(results) / wall,
        "work_s_per_trial": work / len(results),
        "fetch_s_per_trial": fetch / len(results),
        # slot time not spent in a trial's work: scheduling, process start, fetching, reporting
        "overhead_s_per_trial": (slots - work) / len(results),
        "nodes": len({m["node_id"] for m in results}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", default=None, help="Ray cluster (default: a local Ray)")
    parser.add_argument(
        "--parallel",
        default="1,2,3",
        help="concurrencies to measure (1, the baseline, always runs)",
    )
    parser.add_argument("--trials", type=int, default=8, help="trials per concurrency")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per trial")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error(f"--trials must be ≥ 1, got {args.trials}")
    parallels = sorted({1, *(int(p) for p in args.parallel.split(","))})  # the baseline first

    ray.init(address=args.address, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    config = quick()
    config = config.replace(
        short=config.short.replace(train=config.short.train.replace(epochs=args.epochs))
    )
    with tempfile.TemporaryDirectory() as scratch:
        # the experts are cached in runs/cache, shared with `make demo` (same quick settings)
        pre = precompute_all(config, ROOT / "runs" / "trial-scaling", None, print)
        data = trial_data(pre)
        fixed = fixed_settings(config, pre, 10)
        trainable = tune.with_resources(tune.with_parameters(beta_trial, data=data), {"cpu": 1})
        betas = [round(0.1 * (i % 10), 1) + 0.01 * (i // 10) for i in range(args.trials)]
        rows: list[dict[str, float]] = []
        print(
            f"{nodes} node(s), {cpus:g} CPUs; {args.trials} β trials of {args.epochs} epochs "
            "(IPC 10, quick preset) per row"
        )
        print(
            f"{'P':>3} {'wall s':>8} {'trials/min':>11} {'speed-up':>9} {'work s':>7} "
            f"{'overhead s':>11} {'fetch s':>8} {'nodes':>6}"
        )
        for parallel in parallels:
            row = run_batch(trainable, fixed, betas, parallel, str(Path(scratch) / "ray"))
            row["speedup_vs_p1"] = rows[0]["wall_s"] / row["wall_s"] if rows else 1.0
            rows.append(row)
            print(
                f"{parallel:>3} {row['wall_s']:>8.1f} {row['trials_per_minute']:>11.2f} "
                f"{row['speedup_vs_p1']:>8.2f}x {row['work_s_per_trial']:>7.1f} "
                f"{row['overhead_s_per_trial']:>11.2f} {row['fetch_s_per_trial']:>8.3f} "
                f"{row['nodes']:>6}"
            )
    ray.shutdown()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.machine(),
                    "processor": platform.processor(),
                    "address": args.address,
                    "nodes": nodes,
                    "cpus": cpus,
                    "settings": vars(args) | {"out": str(args.out)},
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
