"""What a `--preset paper` search costs on this device, stage by stage, from measured unit costs.

Three units are timed on CIFAR-shaped stand-in data (random pixels: the cost of a step does not
depend on what the pixels show): one training step of an expert (ConvNet width 128, batch 256,
DSA), one matching iteration (ConvNet width 128, N student steps, b = 125, unrolled), and one
training step of the evaluation network (ResNet-18, batch 128, DSA). The stage estimates
multiply them by the preset's amounts of work (the β and α searches assumed to use
``--trials`` trials each, the concave search's typical count on 10-point grids).

    python benchmarks/stage_costs.py --device cuda --out benchmarks/results/stage_costs-h100.json
    python benchmarks/stage_costs.py --device cpu --student-steps 5 --batches 2   # a CPU probe

A matching iteration costs in proportion to N (its N student steps dominate); measured at a
smaller ``--student-steps`` it is scaled to the preset's N, and the output says so.

Each unit's work is also counted in floating-point operations (PyTorch's FLOP counter:
convolutions and matrix products, forward and backward; element-wise work such as DSA is not
counted). The counts do not depend on the device, so the stage table's PFLOP column holds on any
machine; dividing it by a device's sustained FLOP/s gives a first estimate of its hours.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_step import make_case, run_once, time_it

from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import TrainConfig, train_network
from selmatch_tune.settings.presets import paper

SHAPE = (3, 32, 32)
POOL = 49_000  # CIFAR-10's 50,000 training images minus the 2 % validation slice


def counted_flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of ``fn(*args, **kwargs)`` as PyTorch's FLOP counter sees them."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def seconds_per_step(
    model_config: ModelConfig, batch: int, batches: int, device: str
) -> tuple[float, int]:
    """One SGD step with DSA: (seconds, the mean over ``batches`` steps after a warm-up; FLOPs)."""
    model = build_model(model_config, SHAPE, 10, seed=0).to(device)
    images = torch.randn(batch * batches, *SHAPE)  # normalised floats, as after a transform
    labels = torch.arange(batch * batches) % 10
    config = TrainConfig(epochs=1, batch_size=batch, augment="dsa")
    flops = counted_flops(
        train_network,
        model,
        images[:batch],
        labels[:batch],
        config,
        seed=0,
        device=torch.device(device),
    )  # also the warm-up
    _sync(device)
    started = time.perf_counter()
    train_network(model, images, labels, config, seed=0, device=torch.device(device))
    _sync(device)
    return (time.perf_counter() - started) / batches, flops


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:N (default: cuda when present)",
    )
    parser.add_argument(
        "--batches", type=int, default=20, help="training steps timed per network (default: 20)"
    )
    parser.add_argument(
        "--student-steps",
        type=int,
        default=None,
        help="N timed per matching iteration (default: the preset's)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="matching iterations timed")
    parser.add_argument(
        "--trials", type=int, default=6, help="trials assumed per β and per α search (default: 6)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    preset = paper()
    d = preset.distill
    n_measured = args.student_steps or d.n_student_steps
    expert_step, expert_flops = seconds_per_step(
        preset.experts.model, preset.experts.batch_size, args.batches, args.device
    )
    eval_step, eval_flops = seconds_per_step(
        preset.final.model, preset.final.train.batch_size, args.batches, args.device
    )
    units = {
        "expert_step_s": expert_step,
        "eval_step_s": eval_step,
        "expert_step_flops": expert_flops,
        "eval_step_flops": eval_flops,
    }
    print(
        f"{args.device}: expert step {expert_step * 1e3:.1f} ms, {expert_flops / 1e9:.1f} GFLOP "
        f"(ConvNet-128, batch 256); evaluation step {eval_step * 1e3:.1f} ms, "
        f"{eval_flops / 1e9:.1f} GFLOP (ResNet-18, batch 128)"
    )

    rows = []
    expert_steps = (
        preset.experts.num_experts
        * preset.experts.epochs
        * math.ceil(POOL / preset.experts.batch_size)
    )
    rows.append(
        {
            "stage": "experts (all)",
            "ipc": None,
            "device_hours": expert_steps * expert_step / 3600,
            "pflop": expert_steps * expert_flops / 1e15,
        }
    )
    for ipc in preset.ipcs:
        size = ipc * 10
        case = make_case(
            SHAPE, preset.experts.model.width, size, 0.5, n_measured, d.syn_batch, args.device
        )
        iteration = time_it("default", case, args.repeats, args.device)
        iteration *= d.n_student_steps / n_measured
        iteration_flops = counted_flops(run_once, "default", case)
        iteration_flops = round(iteration_flops * d.n_student_steps / n_measured)
        del case
        steps_per_epoch = math.ceil(size / preset.final.train.batch_size)
        short = preset.short.train.epochs * steps_per_epoch  # evaluation steps
        final = preset.final.train.epochs * steps_per_epoch
        units[f"match_iteration_s_ipc{ipc}"] = iteration
        units[f"match_iteration_flops_ipc{ipc}"] = iteration_flops
        for stage, iterations, steps in (
            ("β search", 0, args.trials * short),
            ("α search", args.trials * d.iterations, args.trials * short),
            ("final evaluation", 0, (1 + preset.full_eval_top) * preset.final.num_seeds * final),
        ):
            seconds = iterations * iteration + steps * eval_step
            flops = iterations * iteration_flops + steps * eval_flops
            rows.append(
                {"stage": stage, "ipc": ipc, "device_hours": seconds / 3600, "pflop": flops / 1e15}
            )
        print(
            f"IPC {ipc}: matching iteration {iteration:.2f} s, {iteration_flops / 1e12:.2f} TFLOP"
            + (
                f" (measured at N={n_measured}, scaled to N={d.n_student_steps})"
                if n_measured != d.n_student_steps
                else ""
            )
        )
    total = sum(r["device_hours"] for r in rows)
    total_pflop = sum(r["pflop"] for r in rows)
    print(f"\n{'stage':<18} {'IPC':>5} {'device-hours':>13} {'PFLOP':>10}")
    for row in rows:
        print(
            f"{row['stage']:<18} {row['ipc'] or '':>5} {row['device_hours']:>13.2f} "
            f"{row['pflop']:>10.1f}"
        )
    print(
        f"{'total':<18} {'':>5} {total:>13.2f} {total_pflop:>10.1f}  (divide the hours by the "
        "number of devices that run trials side by side)"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        device_name = (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        )
        args.out.write_text(
            json.dumps(
                {
                    "device": args.device,
                    "device_name": device_name,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "settings": vars(args) | {"out": str(args.out)},
                    "student_steps_measured": n_measured,
                    "units": units,
                    "stages": rows,
                    "total_device_hours": total,
                    "total_pflop": total_pflop,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
