"""Seconds per distillation iteration and peak memory: default (unrolled) and memory-saving
(checkpointed) modes against the plain reference implementation, measured in the same run.

    python benchmarks/distill_step.py                      # CPU, Fashion-MNIST and CIFAR shapes
    python benchmarks/distill_step.py --device cuda --width 128 --batch 125

Peak memory is the growth of the process's peak RSS (VmHWM, reset just before) over its RSS
before the measurement (CPU; each in a fresh process) or ``torch.cuda.max_memory_allocated``
(CUDA). Before timing, the three implementations are
checked to give the same loss and image gradient in float64 on a small case.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_mtt import plain_match

from selmatch.distillation.matching import (
    MatchResult,
    SyntheticTensors,
    checkpointed_match,
    plan_student_steps,
    student_template,
    unrolled_match,
)
from selmatch.training.augment import DSAConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout

SHAPES = {"fmnist": (1, 28, 28), "cifar": (3, 32, 32)}
IMPLEMENTATIONS: dict[str, Callable[..., MatchResult]] = {
    "plain": plain_match,
    "default": unrolled_match,
    "saving": checkpointed_match,
}


def make_case(shape, width, set_size, alpha, n_steps, batch, device, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=width), shape, 10, seed=seed).to(device, dtype)
    template = student_template(model)
    layout = ParamLayout.of(template)
    start = layout.flatten(model).to(device, dtype)
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(set_size, *shape, device=device, dtype=dtype)
    n_frozen = set_size - round(alpha * set_size)
    synthetic = SyntheticTensors(
        images[:n_frozen],
        images[n_frozen:].clone().requires_grad_(True),
        (torch.arange(set_size) % 10).to(device),
    )
    syn_lr = torch.tensor(0.01, device=device, dtype=dtype, requires_grad=True)
    plan = plan_student_steps(
        set_size,
        n_steps,
        batch,
        shape[1:],
        DSAConfig(),
        torch.Generator().manual_seed(seed),
        torch.device(device),
    )
    return model, template, layout, start, target, synthetic, syn_lr, plan


def run_once(name, case):
    model, template, layout, start, target, synthetic, syn_lr, plan = case
    module = model if name == "plain" else template
    return IMPLEMENTATIONS[name](module, layout, start, target, synthetic, syn_lr, plan)


def check_equal(device: str) -> dict:
    case = make_case((1, 28, 28), 8, 30, 0.5, 5, 8, device, dtype=torch.float64)
    results = {name: run_once(name, case) for name in IMPLEMENTATIONS}
    reference = results["plain"]
    report = {}
    for name, result in results.items():
        loss_diff = abs(result.loss - reference.loss) / abs(reference.loss)
        grad_diff = float(
            (result.grad_learnable - reference.grad_learnable).norm()
            / reference.grad_learnable.norm()
        )
        lr_diff = float((result.grad_lr - reference.grad_lr).abs() / reference.grad_lr.abs())
        report[name] = {
            "loss_rel_diff": loss_diff,
            "image_grad_rel_diff": grad_diff,
            "lr_grad_rel_diff": lr_diff,
        }
        assert max(loss_diff, grad_diff, lr_diff) < 1e-4, (name, report[name])
    return report


def measure_memory(args, shape_name, n_steps, name) -> float:
    """Peak memory (MiB) of one iteration, in a fresh process."""
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        f"{shape_name},{n_steps},{name}",
        "--width",
        str(args.width),
        "--batch",
        str(args.batch),
        "--set-size",
        str(args.set_size),
        "--alpha",
        str(args.alpha),
        "--device",
        args.device,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory_probe(args) -> None:
    shape_name, n_steps, name = args.memory_probe.split(",")
    case = make_case(
        SHAPES[shape_name],
        args.width,
        args.set_size,
        args.alpha,
        int(n_steps),
        args.batch,
        args.device,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_once(name, case)
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - before) / 2**20)
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand cached free memory back first
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux ≥ 4.0)
    before = _status_kib("VmRSS")
    run_once(name, case)
    print((_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def time_it(name, case, repeats, device) -> float:
    run_once(name, case)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        run_once(name, case)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="fmnist,cifar", help="fmnist and/or cifar")
    parser.add_argument("--steps", default="10,20,40", help="student steps N to measure")
    parser.add_argument("--width", type=int, default=32, help="ConvNet width (default: 32)")
    parser.add_argument("--batch", type=int, default=64, help="synthetic batch b (default: 64)")
    parser.add_argument("--set-size", type=int, default=200, help="synthetic set size")
    parser.add_argument("--alpha", type=float, default=0.2, help="learnable share (default 0.2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args)
        return
    equal = check_equal(args.device)
    print("equal results (float64, relative to plain):")
    for name, diffs in equal.items():
        print(f"  {name:<8} " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    rows = []
    header = (
        f"{'shape':<7} {'N':>3} {'plain s':>8} {'default s':>9} {'saving s':>9} "
        f"{'plain/default':>13} {'mem plain':>10} {'mem default':>11} {'mem saving':>10}"
    )
    print(
        f"\nwidth {args.width}, b {args.batch}, set {args.set_size}, α {args.alpha}, "
        f"{args.device}, {torch.get_num_threads()} threads; memory in MiB"
    )
    print(header)
    for shape_name in args.shapes.split(","):
        for n_steps in (int(n) for n in args.steps.split(",")):
            case = make_case(
                SHAPES[shape_name],
                args.width,
                args.set_size,
                args.alpha,
                n_steps,
                args.batch,
                args.device,
            )
            seconds = {
                name: time_it(name, case, args.repeats, args.device) for name in IMPLEMENTATIONS
            }
            memory = {
                name: measure_memory(args, shape_name, n_steps, name) for name in IMPLEMENTATIONS
            }
            row = {
                "shape": shape_name,
                "n_steps": n_steps,
                "seconds": seconds,
                "peak_mib": memory,
                "speedup_default_vs_plain": seconds["plain"] / seconds["default"],
            }
            rows.append(row)
            s, m = seconds, memory
            print(
                f"{shape_name:<7} {n_steps:>3} {s['plain']:>8.2f} {s['default']:>9.2f} "
                f"{s['saving']:>9.2f} {row['speedup_default_vs_plain']:>12.2f}x "
                f"{m['plain']:>10.0f} {m['default']:>11.0f} {m['saving']:>10.0f}"
            )
    for shape_name in args.shapes.split(","):
        by_n = {r["n_steps"]: r for r in rows if r["shape"] == shape_name}
        if by_n:
            low, high = min(by_n), max(by_n)
            ratio = by_n[high]["peak_mib"]["saving"] / by_n[low]["peak_mib"]["saving"]
            print(f"{shape_name}: memory-saving peak at N={high} / N={low}: {ratio:.2f}x")
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
