"""Trajectories and images per second when E trajectories are matched in one batched
computation (``--trajectories-per-step E``), against E = 1 measured in the same run.

    python benchmarks/multi_trajectory.py                  # CPU, ConvNet width 32, 1×28×28, b 64
    python benchmarks/multi_trajectory.py --tiny           # a seconds-long run on tiny shapes
    python benchmarks/multi_trajectory.py --device cuda --width 128 --batch 125

One call of ``selmatch.distillation.matching.match_trajectories`` with E trajectories (each its own
start, target, batches and DSA draws, as in a distillation) is timed (median of ``--repeats`` after
a warm-up). trajectories/s = E / seconds; images/s = E · N · b / seconds (synthetic images through
the student, forward and double backward); iterations/s = 1 / seconds (image updates). E = 1 is
today's single-trajectory path, so E sequential one-trajectory calls cost E times its seconds.
Before timing, the batched result is checked against the mean of E sequential ones in float64.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from selmatch.distillation.matching import (
    StudentPlan,
    SyntheticTensors,
    match_trajectories,
    plan_student_steps,
    sequential_match,
    student_template,
)
from selmatch.training.augment import DSAConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout

Case = tuple[
    torch.nn.Module,
    ParamLayout,
    torch.Tensor,
    torch.Tensor,
    SyntheticTensors,
    torch.Tensor,
    list[StudentPlan],
]


def make_case(
    trajectories: int,
    shape: tuple[int, int, int],
    width: int,
    set_size: int,
    alpha: float,
    n_steps: int,
    batch: int,
    device: str,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """E different starts (an expert's θ*_t stand-in plus noise) and targets, E plans drawn one
    after another from one generator, as a distillation iteration draws them."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=width), shape, 10, seed=seed).to(device, dtype)
    template = student_template(model)
    layout = ParamLayout.of(template)
    base = layout.flatten(model).to(device, dtype)
    starts = base + 0.01 * torch.randn(trajectories, layout.numel, device=device, dtype=dtype)
    targets = starts + 0.01 * torch.randn_like(starts)
    images = torch.randn(set_size, *shape, device=device, dtype=dtype)
    n_frozen = set_size - round(alpha * set_size)
    synthetic = SyntheticTensors(
        images[:n_frozen],
        images[n_frozen:].clone().requires_grad_(True),
        (torch.arange(set_size) % 10).to(device),
    )
    syn_lr = torch.tensor(0.01, device=device, dtype=dtype, requires_grad=True)
    generator = torch.Generator().manual_seed(seed)
    size, dsa = (shape[1], shape[2]), DSAConfig()
    plans = [
        plan_student_steps(set_size, n_steps, batch, size, dsa, generator, torch.device(device))
        for _ in range(trajectories)
    ]
    return template, layout, starts, targets, synthetic, syn_lr, plans


def check_equal(device: str, mode: str) -> dict[str, float]:
    """Relative differences of the batched (E = 4) loss and gradients to the mean of 4
    sequential single-trajectory computations, float64, a small case."""
    case = make_case(4, (1, 28, 28), 8, 30, 0.5, 3, 8, device, dtype=torch.float64)
    batched, reference = match_trajectories(mode, *case), sequential_match(mode, *case)
    report = {
        "loss_rel_diff": abs(batched.loss - reference.loss) / abs(reference.loss),
        "image_grad_rel_diff": float(
            (batched.grad_learnable - reference.grad_learnable).norm()
            / reference.grad_learnable.norm()
        ),
        "lr_grad_rel_diff": float(
            (batched.grad_lr - reference.grad_lr).abs() / reference.grad_lr.abs()
        ),
    }
    assert max(report.values()) < 1e-10, report
    return report


def time_it(mode: str, case: Case, repeats: int, device: str) -> float:
    match_trajectories(mode, *case)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        match_trajectories(mode, *case)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trajectories", default="1,2,4,8", help="values of E (with 1)")
    parser.add_argument("--width", type=int, default=32, help="ConvNet width (default: 32)")
    parser.add_argument("--batch", type=int, default=64, help="synthetic batch b (default: 64)")
    parser.add_argument("--steps", type=int, default=10, help="student steps N (default: 10)")
    parser.add_argument("--set-size", type=int, default=200, help="synthetic set size")
    parser.add_argument("--alpha", type=float, default=0.2, help="learnable share (default 0.2)")
    parser.add_argument("--mode", default="unrolled", choices=("unrolled", "checkpointed"))
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="seconds-long run: width 8, b 16, N 3, a set of 40 (overhead-bound shapes)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    if args.tiny:
        args.width, args.batch, args.steps, args.set_size = 8, 16, 3, 40
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    counts = sorted({1, *(int(e) for e in args.trajectories.split(","))})
    equal = check_equal(args.device, args.mode)
    print(
        "batched E = 4 vs the mean of 4 sequential (float64): "
        + ", ".join(f"{k} {v:.1e}" for k, v in equal.items())
    )
    print(
        f"\nConvNet width {args.width}, 1×28×28, N {args.steps}, b {args.batch}, set "
        f"{args.set_size}, α {args.alpha}, {args.mode}, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'E':>3} {'s/iteration':>11} {'traj/s':>8} {'images/s':>9} {'traj/s vs E=1':>14}")
    rows: list[dict[str, float]] = []
    for count in counts:
        case = make_case(
            count,
            (1, 28, 28),
            args.width,
            args.set_size,
            args.alpha,
            args.steps,
            args.batch,
            args.device,
        )
        seconds = time_it(args.mode, case, args.repeats, args.device)
        row = {
            "E": count,
            "seconds": seconds,
            "trajectories_per_s": count / seconds,
            "images_per_s": count * args.steps * args.batch / seconds,
        }
        row["ratio_vs_e1"] = row["trajectories_per_s"] / (
            rows[0]["trajectories_per_s"] if rows else row["trajectories_per_s"]
        )
        rows.append(row)
        print(
            f"{count:>3} {seconds:>11.3f} {row['trajectories_per_s']:>8.2f} "
            f"{row['images_per_s']:>9.0f} {row['ratio_vs_e1']:>13.2f}x",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.machine(),
                    "processor": platform.processor(),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "device": args.device,
                    "settings": vars(args) | {"out": str(args.out)},
                    "equal": equal,
                    "rows": rows,
                },
                indent=2,
            )
        )
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
