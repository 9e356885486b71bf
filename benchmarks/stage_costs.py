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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_step import make_case, time_it

from selmatch.models import ModelConfig, build_model
from selmatch.train import TrainConfig, train_network
from selmatch_tune.presets import paper

SHAPE = (3, 32, 32)
POOL = 49_000  # CIFAR-10's 50,000 training images minus the 2 % validation slice


def seconds_per_step(model_config: ModelConfig, batch: int, batches: int, device: str) -> float:
    """One SGD step with DSA, median-free: the mean over ``batches`` steps after a warm-up."""
    model = build_model(model_config, SHAPE, 10, seed=0).to(device)
    images = torch.randn(batch * batches, *SHAPE)  # normalised floats, as after a transform
    labels = torch.arange(batch * batches) % 10
    config = TrainConfig(epochs=1, batch_size=batch, augment="dsa")
    train_network(model, images[:batch], labels[:batch], config, seed=0,
                  device=torch.device(device))  # warm-up  # fmt: skip
    _sync(device)
    started = time.perf_counter()
    train_network(model, images, labels, config, seed=0, device=torch.device(device))
    _sync(device)
    return (time.perf_counter() - started) / batches


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:N (default: cuda when present)")  # fmt: skip
    parser.add_argument("--batches", type=int, default=20,
                        help="training steps timed per network (default: 20)")  # fmt: skip
    parser.add_argument("--student-steps", type=int, default=None,
                        help="N timed per matching iteration (default: the preset's)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="matching iterations timed")
    parser.add_argument("--trials", type=int, default=6,
                        help="trials assumed per β and per α search (default: 6)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    preset = paper()
    d = preset.distill
    n_measured = args.student_steps or d.n_student_steps
    expert_step = seconds_per_step(preset.experts.model, preset.experts.batch_size, args.batches,
                                   args.device)  # fmt: skip
    eval_step = seconds_per_step(preset.final.model, preset.final.train.batch_size, args.batches,
                                 args.device)  # fmt: skip
    units = {"expert_step_s": expert_step, "eval_step_s": eval_step}
    print(f"{args.device}: expert step {expert_step * 1e3:.1f} ms (ConvNet-128, batch 256), "
          f"evaluation step {eval_step * 1e3:.1f} ms (ResNet-18, batch 128)")  # fmt: skip

    rows = []
    expert_hours = (preset.experts.num_experts * preset.experts.epochs
                    * math.ceil(POOL / preset.experts.batch_size) * expert_step / 3600)  # fmt: skip
    rows.append({"stage": "experts (all)", "ipc": None, "device_hours": expert_hours})
    for ipc in preset.ipcs:
        size = ipc * 10
        case = make_case(SHAPE, preset.experts.model.width, size, 0.5, n_measured, d.syn_batch,
                         args.device)  # fmt: skip
        iteration = time_it("default", case, args.repeats, args.device)
        iteration *= d.n_student_steps / n_measured
        del case
        steps_per_epoch = math.ceil(size / preset.final.train.batch_size)
        short = preset.short.train.epochs * steps_per_epoch * eval_step
        final = preset.final.train.epochs * steps_per_epoch * eval_step
        beta = args.trials * short
        alpha = args.trials * (d.iterations * iteration + short)
        full = (1 + preset.full_eval_top) * preset.final.num_seeds * final
        units[f"match_iteration_s_ipc{ipc}"] = iteration
        for stage, seconds in (("β search", beta), ("α search", alpha), ("final evaluation", full)):
            rows.append({"stage": stage, "ipc": ipc, "device_hours": seconds / 3600})
        print(f"IPC {ipc}: matching iteration {iteration:.2f} s"
              + (f" (measured at N={n_measured}, scaled to N={d.n_student_steps})"
                 if n_measured != d.n_student_steps else ""))  # fmt: skip
    total = sum(r["device_hours"] for r in rows)
    print(f"\n{'stage':<18} {'IPC':>5} {'device-hours':>13}")
    for row in rows:
        print(f"{row['stage']:<18} {row['ipc'] or '':>5} {row['device_hours']:>13.2f}")
    print(f"{'total':<18} {'':>5} {total:>13.2f}  (divide by the number of devices that run "
          "trials side by side)")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        device_name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                       else platform.processor() or platform.machine())  # fmt: skip
        args.out.write_text(json.dumps({
            "device": args.device, "device_name": device_name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "settings": vars(args) | {"out": str(args.out)},
            "student_steps_measured": n_measured, "units": units, "stages": rows,
            "total_device_hours": total,
        }, indent=2) + "\n")  # fmt: skip
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
