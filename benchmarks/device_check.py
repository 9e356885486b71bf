"""One prepared device check: the distillation step at the paper's CIFAR shapes in every mode and
with every speed lever, its FLOP floor, an expert epoch, a ResNet-18 evaluation epoch and the
quick-preset search, within 8 minutes on one H100/H200; one JSON and one Markdown table.

    bash benchmarks/device_check.sh                      # a GPU: CIFAR shapes, at most 8 min
    bash benchmarks/device_check.sh --tiny --out DIR     # CPU, tiny shapes (the tests run it)

Step rows, each at N = 20 and N = 55 (ConvNet-128-BN on 3×32×32, b = 125, a set of 5,000 =
CIFAR-10 IPC 500 with α = 0.2 learnable, DSA on every step: Table 5 of the paper): ``plain``
(benchmarks/plain_mtt.py), ``default`` (unrolled), ``memory-saving`` (checkpointed), and the
default mode with one lever of selmatch.distillation.levers each: ``fp32``, ``tf32``, ``bf16``,
``channels-last``, ``compile``, ``cuda-graphs``; and E = 8 trajectories per iteration in one
batched computation (``E8``: default mode, ``memory-saving-E8``: checkpointed), compared with
``default`` per trajectory (trajectories/s). Every one-trajectory row sees the same start,
target, batches and DSA draws; an E-row's first trajectory is theirs.
Per row: the first call, timed on its own (compilation and graph capture
happen there); seconds per iteration, the median of repeats fitted to a per-row time budget;
the ratio to ``default`` measured in the same run; the peak GPU memory of the row
(``torch.cuda.max_memory_allocated`` growth); the relative error of the matching loss, the
image gradient and the lr gradient against the ``fp32`` row (IEEE float32 everywhere).

FLOP floor: the FLOPs of one default-mode iteration as ``torch.utils.flop_counter`` counts them
(convolutions and matrix products, forward and every backward) ÷ the device's dense bf16 peak
(``PEAK_TFLOPS``); a row's "× floor" is its seconds over that floor. On CPU (no peak) it is null.

Every section (and every row) is wrapped: a failure is written into the JSON as that section's
error and the rest still runs. The JSON is rewritten after every row, so a run stopped from
outside keeps what it measured. A time budget (``--budget-s``, default 450 s) guards the
whole: rows are skipped once too little is left, the search gets what remains.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_mtt import plain_match

from selmatch.distillation.levers import Levers, StudentStep, precision_scope
from selmatch.distillation.matching import (
    MatchResult,
    StudentPlan,
    SyntheticTensors,
    match_trajectories,
    plan_student_steps,
    student_template,
)
from selmatch.training.augment import DSAConfig
from selmatch.training.experts import ExpertConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout
from selmatch.training.train import TrainConfig, train_network

ROOT = Path(__file__).resolve().parents[1]

#: Dense (no sparsity) peak TFLOP/s by device name, from NVIDIA's datasheets. H100 SXM5 — and
#: the H200 SXM, the same chip: FP32 67, TF32 tensor core 494.7, BF16 989.4 (the datasheets'
#: 989 and 1,979 are with 2:4 sparsity); H100 PCIe: 51, 378, 756; H100 NVL and H200 NVL: 60,
#: 417.5, 835.5; A100: 19.5, 156, 312. The first name contained in the device's name wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)

#: The step rows: (matching mode or "plain", the lever of the row, E = trajectories per
#: iteration; E > 1 rows are ``--trajectories-per-step E``, compared per trajectory)
ROWS: dict[str, tuple[str, Levers | None, int]] = {
    "plain": ("plain", None, 1),
    "default": ("unrolled", None, 1),
    "memory-saving": ("checkpointed", None, 1),
    "fp32": ("unrolled", Levers(precision="fp32"), 1),
    "tf32": ("unrolled", Levers(precision="tf32"), 1),
    "bf16": ("unrolled", Levers(precision="bf16"), 1),
    "channels-last": ("unrolled", Levers(channels_last=True), 1),
    "compile": ("unrolled", Levers(compile=True), 1),
    "cuda-graphs": ("unrolled", Levers(cuda_graphs=True), 1),
    "E8": ("unrolled", None, 8),
    "memory-saving-E8": ("checkpointed", None, 8),
    # combinations: the plain code and the fastest levers in IEEE float32
    "plain-fp32": ("plain", Levers(precision="fp32"), 1),
    "compile-fp32": ("unrolled", Levers(compile=True, precision="fp32"), 1),
    "cuda-graphs-fp32": ("unrolled", Levers(cuda_graphs=True, precision="fp32"), 1),
    "compile-cuda-graphs": ("unrolled", Levers(compile=True, cuda_graphs=True), 1),
    "compile-cuda-graphs-fp32": (
        "unrolled",
        Levers(compile=True, cuda_graphs=True, precision="fp32"),
        1,
    ),
}
MAX_E = max(e for _, _, e in ROWS.values())
REFERENCE = "fp32"
#: ``--reference float64``: the default mode computed in float64 instead of the fp32 row
FLOAT64 = "float64"
SECTIONS = ("environment", "flops", "step", "expert_epoch", "eval_epoch", "search")


@dataclass(frozen=True)
class Shapes:
    """What is measured; ``PAPER`` on a GPU, ``TINY`` for the CPU run of the tests."""

    width: int
    depth: int
    image: tuple[int, int, int]
    set_size: int
    alpha: float
    batch: int
    steps: tuple[int, ...]
    expert_images: int
    eval_images: int
    row_seconds: float
    max_repeats: int


PAPER = Shapes(
    width=128,
    depth=3,
    image=(3, 32, 32),
    set_size=5000,
    alpha=0.2,
    batch=125,
    steps=(20, 55),
    expert_images=50_000,
    eval_images=5_000,
    row_seconds=6.0,
    max_repeats=10,
)
TINY = Shapes(
    width=8,
    depth=1,
    image=(3, 8, 8),
    set_size=20,
    alpha=0.5,
    batch=10,
    steps=(2, 3),
    expert_images=200,
    eval_images=40,
    row_seconds=0.5,
    max_repeats=2,
)


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.started, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class Report:
    """The JSON being built, written to disk after every change."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"settings": settings, "sections": {}, "rows": []}

    def section(self, name: str, value: dict[str, Any]) -> None:
        self.data["sections"][name] = value
        self.save()

    def row(self, value: dict[str, Any]) -> None:
        self.data["rows"].append(value)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(self.data, indent=2))


def guarded(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` with status ok, or its error as one line (and the traceback's tail)."""
    try:
        return {"status": "ok", **work()}
    except Exception as error:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return {
            "status": "error",
            "error": f"{type(error).__name__}: {error}".splitlines()[0],
            "traceback": tail,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- environment
def device_peak(device: torch.device) -> tuple[str, dict[str, float] | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def environment(device: torch.device) -> dict[str, Any]:
    name, peak = device_peak(device)
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "peak_tflops": peak,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cudnn_conv_fp32_precision": getattr(
            getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None
        ),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "cuda": torch.version.cuda,
            "capability": list(torch.cuda.get_device_capability()),
            "memory_gib": properties.total_memory / 2**30,
            "multiprocessors": properties.multi_processor_count,
        }
    return info


# --------------------------------------------------------------------------- the step
@dataclass
class Case:
    """One model, start, target and set for every row; plans per N."""

    model: torch.nn.Module
    template: torch.nn.Module
    layout: ParamLayout
    starts: torch.Tensor  # (MAX_E, P): row 0 is the one-trajectory rows' start
    targets: torch.Tensor
    synthetic: SyntheticTensors
    syn_lr: torch.Tensor

    def double(self) -> Case:
        """The same case in float64 (the reference of ``--reference float64``)."""
        model = copy.deepcopy(self.model).double()
        synthetic = SyntheticTensors(
            self.synthetic.frozen.double(),
            self.synthetic.learnable.detach().double().requires_grad_(True),
            self.synthetic.labels,
        )
        syn_lr = self.syn_lr.detach().double().requires_grad_(True)
        return Case(
            model,
            student_template(model),
            self.layout,
            self.starts.double(),
            self.targets.double(),
            synthetic,
            syn_lr,
        )

    def plans(
        self, shapes: Shapes, n_steps: int, device: torch.device, count: int = 1
    ) -> list[StudentPlan]:
        """``count`` plans (batches and DSA draws) for N = ``n_steps``, one generator: the
        first is the one-trajectory rows' plan."""
        generator = torch.Generator().manual_seed(n_steps)
        return [
            plan_student_steps(
                len(self.synthetic),
                n_steps,
                shapes.batch,
                shapes.image[1:],
                DSAConfig(),
                generator,
                device,
            )
            for _ in range(count)
        ]


def build_case(shapes: Shapes, device: torch.device) -> Case:
    generator = torch.Generator().manual_seed(0)
    model_config = ModelConfig(width=shapes.width, depth=shapes.depth)
    model = build_model(model_config, shapes.image, 10, seed=0).to(device)
    template = student_template(model)
    layout = ParamLayout.of(template)
    start = layout.flatten(model).to(device)
    # E different starts and targets (an expert's θ*_t stand-in, perturbed per trajectory)
    noise = torch.randn(2, MAX_E, *start.shape, generator=generator).to(device)
    starts = start + torch.cat([torch.zeros_like(noise[0, :1]), 0.001 * noise[0, 1:]])
    targets = starts + 0.01 * noise[1]
    images = torch.randn(shapes.set_size, *shapes.image, generator=generator).to(device)
    n_frozen = shapes.set_size - round(shapes.alpha * shapes.set_size)
    synthetic = SyntheticTensors(
        images[:n_frozen],
        images[n_frozen:].clone().requires_grad_(True),
        (torch.arange(shapes.set_size) % 10).to(device),
    )
    syn_lr = torch.tensor(0.01, device=device, requires_grad=True)
    return Case(model, template, layout, starts, targets, synthetic, syn_lr)


def step_call(
    name: str, case: Case, plans: list[StudentPlan], steps: dict[str, StudentStep]
) -> Callable[[], MatchResult]:
    """One iteration of row ``name`` (its E trajectories: the first E of ``plans``); the rows'
    StudentSteps live across N (one compilation)."""
    mode, levers, trajectories = ROWS[name]
    args = (
        case.starts[:trajectories],
        case.targets[:trajectories],
        case.synthetic,
        case.syn_lr,
        plans[:trajectories],
    )
    if mode == "plain":
        precision = "default" if levers is None else levers.precision

        def plain() -> MatchResult:
            with precision_scope(precision):
                return plain_match(
                    case.model,
                    case.layout,
                    case.starts[0],
                    case.targets[0],
                    case.synthetic,
                    case.syn_lr,
                    plans[0],
                )

        return plain
    if levers is not None and name not in steps:
        steps[name] = StudentStep(case.template, case.layout, levers)
    step = steps.get(name)
    return lambda: match_trajectories(mode, case.template, case.layout, *args, step)


def time_calls(
    call: Callable[[], MatchResult], device: torch.device, shapes: Shapes
) -> tuple[MatchResult, dict[str, Any]]:
    """The first call on its own, then repeats until the row's time budget is spent."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    synchronize(device)
    started = time.perf_counter()
    result = call()
    synchronize(device)
    first = time.perf_counter() - started
    times: list[float] = []
    while len(times) < shapes.max_repeats and (not times or sum(times) < shapes.row_seconds):
        started = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - started)
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    return result, {
        "first_call_s": first,
        "seconds": statistics.median(times),
        "repeats": len(times),
        "peak_mib": peak,
    }


def errors(result: MatchResult, reference: MatchResult) -> dict[str, float]:
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).norm() / b.double().norm())

    out = {
        "loss_rel_err": abs(result.loss - reference.loss) / abs(reference.loss),
        "image_grad_rel_err": rel(result.grad_learnable, reference.grad_learnable),
        "lr_grad_rel_err": rel(result.grad_lr, reference.grad_lr),
    }
    out["within_1e-3"] = out["loss_rel_err"] <= 1e-3 and out["image_grad_rel_err"] <= 1e-3
    return out


def count_flops(call: Callable[[], MatchResult]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def flops_section(case: Case, shapes: Shapes, device: torch.device) -> dict[str, Any]:
    """FLOPs of one iteration per mode and N, and the floor: default's FLOPs ÷ the peak."""
    _, peak = device_peak(device)
    per_n: dict[str, Any] = {}
    for n_steps in shapes.steps:
        plans = case.plans(shapes, n_steps, device)
        counts = {
            name: count_flops(step_call(name, case, plans, {}))
            for name in ("default", "memory-saving", "plain")
        }
        floors = (
            None
            if peak is None
            else {
                precision: counts["default"] / (tflops * 1e12) for precision, tflops in peak.items()
            }
        )
        per_n[str(n_steps)] = {"flops": counts, "floor_s": floors}
    return {
        "per_n": per_n,
        "peak_tflops": peak,
        "floor_definition": "FLOPs of one default-mode iteration (FlopCounterMode) / the "
        "device's dense peak; rows are compared with the bf16 floor",
    }


def step_rows(
    report: Report, case: Case, shapes: Shapes, device: torch.device, clock: Clock, reserve: float
) -> dict[str, Any]:
    """Every row at every N, the reference row first; one row's failure is that row's error."""
    steps: dict[str, StudentStep] = {}
    floors = report.data["sections"].get("flops", {}).get("per_n", {})
    rows = report.data["settings"]["rows"]
    order = [name for name in (REFERENCE, *ROWS) if name in rows]
    order = list(dict.fromkeys(order))
    for n_steps in shapes.steps:
        plans = case.plans(shapes, n_steps, device, MAX_E)
        results: dict[str, MatchResult] = {}
        if report.data["settings"]["reference"] == FLOAT64:
            reference: dict[str, Any] = {"row": FLOAT64, "n_steps": n_steps}
            report.row(reference | guarded(partial(_float64, case, plans, results)))
            _free(device)
        for name in order:
            row: dict[str, Any] = {"row": name, "n_steps": n_steps}
            if clock.left() < reserve:
                report.row(row | {"status": "skipped", "error": "time budget spent"})
                continue
            call = step_call(name, case, plans, steps)
            row |= guarded(partial(_measure, name, call, device, shapes, results))
            lever = ROWS[name][1]
            if row["status"] != "ok" or (lever and lever.cuda_graphs):
                # free what a failed lever holds (graphs, compiled code), and the graphs of
                # every N's slots (captured anew at the next N)
                steps.pop(name, None)
                _free(device)
            report.row(row)
        _compare(report, n_steps, results, floors.get(str(n_steps), {}).get("floor_s"))
        results.clear()
        _free(device)
    steps.clear()
    _free(device)
    return {"rows": len(report.data["rows"])}


def _float64(case: Case, plans: list[StudentPlan], results: dict[str, MatchResult]) -> dict:
    """The default mode's iteration in float64: the reference of every row's errors."""
    double = case.double()
    started = time.perf_counter()
    results[FLOAT64] = step_call("default", double, plans, {})()
    synchronize(double.starts.device)
    del double
    return {"first_call_s": time.perf_counter() - started}


def _free(device: torch.device) -> None:
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure(
    name: str,
    call: Callable[[], MatchResult],
    device: torch.device,
    shapes: Shapes,
    results: dict[str, MatchResult],
) -> dict[str, Any]:
    result, timing = time_calls(call, device, shapes)
    results[name] = result
    return timing


def _compare(
    report: Report, n_steps: int, results: dict[str, MatchResult], floors: dict | None
) -> None:
    """Errors against the reference, speed against default, × floor: filled into the rows."""
    reference = results.get(FLOAT64, results.get(REFERENCE, results.get("default")))
    rows = [
        r
        for r in report.data["rows"]
        if r["n_steps"] == n_steps and r["status"] == "ok" and r["row"] in ROWS
    ]
    default = next((r["seconds"] for r in rows if r["row"] == "default"), None)
    for row in rows:
        trajectories = ROWS[row["row"]][2]
        if reference is not None and row["row"] in results and trajectories == 1:
            row |= errors(results[row["row"]], reference)
        # per trajectory: an E-trajectory row does E default iterations' matching work
        row["trajectories"] = trajectories
        row["trajectories_per_s"] = trajectories / row["seconds"]
        row["speedup_vs_default"] = (
            None if default is None else default * trajectories / row["seconds"]
        )
        row["x_floor"] = None if not floors else row["seconds"] / (trajectories * floors["bf16"])
    report.save()


# --------------------------------------------------------------------------- epochs
def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.25


def expert_epoch(shapes: Shapes, device: torch.device) -> dict[str, Any]:
    """One epoch of a ConvNet-BN expert (the experts' settings: SGD lr 0.01, batch 256, DSA) on
    random uint8 images of the CIFAR shape, after a two-batch warm-up."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (shapes.expert_images, *shapes.image), dtype=torch.uint8, generator=generator
    )
    labels = torch.randint(0, 10, (shapes.expert_images,), generator=generator)
    model_config = ModelConfig(width=shapes.width, depth=shapes.depth)
    train = ExpertConfig(model=model_config).train_config().replace(epochs=1)
    model = build_model(model_config, shapes.image, 10, seed=0)
    warm = 2 * train.batch_size
    train_network(
        model, images[:warm], labels[:warm], train, seed=0, device=device, normalize=_normalize
    )
    stats = train_network(model, images, labels, train, seed=0, device=device, normalize=_normalize)
    return {
        "model": model_config.describe(),
        "images": shapes.expert_images,
        "batch": train.batch_size,
        "seconds": stats.seconds,
        "images_per_s": shapes.expert_images / stats.seconds,
    }


def eval_epoch(shapes: Shapes, device: torch.device) -> dict[str, Any]:
    """One epoch of the evaluation protocol (ResNet-18, SGD momentum 0.9, batch 128, combined
    augmentation: DSA on the α share, crop+flip on the rest) over a set of the CIFAR-10 IPC 500
    size, after a two-batch warm-up."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shapes.eval_images, *shapes.image, generator=generator)
    labels = torch.randint(0, 10, (shapes.eval_images,), generator=generator)
    mask = torch.rand(shapes.eval_images, generator=generator) < shapes.alpha
    train = TrainConfig(epochs=1, augment="combined")
    model = build_model(ModelConfig(name="resnet18"), shapes.image, 10, seed=0)
    warm = 2 * train.batch_size
    train_network(
        model, images[:warm], labels[:warm], train, seed=0, device=device, dsa_mask=mask[:warm]
    )
    stats = train_network(model, images, labels, train, seed=0, device=device, dsa_mask=mask)
    return {
        "model": "resnet18",
        "images": shapes.eval_images,
        "batch": train.batch_size,
        "seconds": stats.seconds,
        "images_per_s": shapes.eval_images / stats.seconds,
    }


# --------------------------------------------------------------------------- the search
SEARCH_PACKAGES = ("ray", "optuna", "mlflow")


def pipeline_commands(work: Path, tiny: bool) -> list[tuple[str, list[str]]]:
    """The quick preset's library work for one IPC 10 trial as ``selmatch`` commands: its
    experts (2 × 4 epochs on 1,000 images per class, width 16), its consistency score (4
    networks × 4 epochs), one SelMatch distillation (β 0.2, α 0.5, N 10, b 64, 30 iterations)
    and its short evaluation (50 epochs, one seed); ``tiny``: the same commands, a few seconds
    each on a CPU."""
    per_class, epochs, iterations, eval_epochs = (
        ("50", "1", "2", "2") if tiny else ("1000", "4", "30", "50")
    )
    # the distillation reads expert epochs up to max start 2 + M 2 = 4
    expert_epochs = "4"
    experts, distilled = str(work / "experts"), str(work / "distill")
    return [
        (
            "experts",
            [
                "experts",
                "--out",
                experts,
                "--width",
                "16",
                "--num-experts",
                "2",
                "--epochs",
                expert_epochs,
                "--per-class",
                per_class,
                "--batch-size",
                "256",
                "--el2n-epoch",
                "1",
            ],
        ),
        (
            "consistency",
            [
                "scores",
                "--scores",
                experts,
                "--estimate",
                "consistency",
                "--networks",
                "4",
                "--epochs",
                epochs,
                "--per-class",
                per_class,
                "--width",
                "16",
            ],
        ),
        (
            "distill",
            [
                "distill",
                "--method",
                "selmatch",
                "--ipc",
                "10",
                "--experts",
                experts,
                "--scores",
                experts,
                "--out",
                distilled,
                "--beta",
                "0.2",
                "--alpha",
                "0.5",
                "--score",
                "consistency",
                "--beta-convention",
                "data-fraction",
                "--student-steps",
                "10",
                "--expert-epochs",
                "2",
                "--max-start-epoch",
                "2",
                "--syn-batch",
                "64",
                "--iterations",
                iterations,
            ],
        ),
        (
            "evaluate",
            [
                "evaluate",
                "--set",
                distilled,
                "--width",
                "16",
                "--epochs",
                eval_epochs,
                "--seeds",
                "1",
                "--out",
                str(work / "eval.json"),
            ],
        ),
    ]


def pipeline_section(
    args: argparse.Namespace, device: torch.device, clock: Clock, reason: str
) -> dict[str, Any]:
    """Where the search's packages cannot be installed (a device machine with no registry, and
    Ray's wheel larger than what travels to it): the library half of the quick preset — what
    its Ray tasks and trials call — as ``selmatch`` commands on ``device``, timed per stage."""
    work = Path(args.search_out or tempfile.mkdtemp(prefix="device-check-pipeline-")) / "pipeline"
    stages: dict[str, float] = {}
    for stage, command in pipeline_commands(work, args.tiny):
        timeout = clock.left() - 10
        if timeout < 15:
            return {
                "status": "error",
                "error": f"time budget spent before {stage}",
                "reason": reason,
                "stages_s": stages,
            }
        data = ["--data-root", args.data_root] if args.data_root else []
        command = [
            sys.executable,
            "-m",
            "selmatch",
            *command,
            "--device",
            str(device),
            "--no-progress",
            *data,
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            return {
                "status": "error",
                "error": f"{stage} timed out after {timeout:.0f} s",
                "reason": reason,
                "stages_s": stages,
            }
        stages[stage] = time.perf_counter() - started
        if done.returncode != 0:
            return {
                "status": "error",
                "error": f"{stage}: exit code {done.returncode}",
                "reason": reason,
                "stages_s": stages,
                "output_tail": (done.stdout + done.stderr).splitlines()[-20:],
            }
    result = json.loads((work / "eval.json").read_text())["result"]
    return {
        "kind": "pipeline",
        "reason": reason,
        "seconds": sum(stages.values()),
        "stages_s": stages,
        "test_accuracy": result["test_mean"],
        "val_accuracy": result["val_mean"],
        "train_seconds": result["train_seconds"],
    }


def search_section(args: argparse.Namespace, device: torch.device, clock: Clock) -> dict[str, Any]:
    """The search as its command runs it: ``quick`` (or ``smoke``) end to end, or ``dry``
    (``--dry-run`` of the smoke preset with the levers set: the settings reach the search)."""
    if args.search == "skip":
        return {"status": "skipped", "error": "--search skip"}
    missing = [p for p in SEARCH_PACKAGES if importlib.util.find_spec(p) is None]
    if args.search == "pipeline" or missing:
        reason = (
            "--search pipeline"
            if args.search == "pipeline"
            else f"the search's packages are not installed here: {', '.join(missing)}"
        )
        return guarded(partial(pipeline_section, args, device, clock, reason))
    folder = Path(args.search_out or tempfile.mkdtemp(prefix="device-check-search-")) / "search"
    command = [sys.executable, str(ROOT / "tune" / "search_alpha_beta.py"), "--out", str(folder)]
    if args.search == "dry":
        command += [
            "--preset",
            "smoke",
            "--dry-run",
            "--override",
            "distill.precision=tf32",
            "--override",
            "distill.channels_last=true",
        ]
    else:
        command += ["--preset", args.search]
        if device.type == "cuda":
            command += ["--gpus-per-trial", "0.5", "--cpus-per-trial", "4"]
    if args.data_root:
        command += ["--data-root", args.data_root]
    timeout = clock.left() - 10
    if timeout < (20 if args.search == "dry" else 90):
        return {"status": "skipped", "error": f"time budget: {max(timeout, 0):.0f} s left"}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as expired:
        raw = expired.stdout or b""  # bytes, whatever text= says
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return {
            "status": "error",
            "error": f"timed out after {timeout:.0f} s",
            "command": command[1:],
            "output_tail": output.splitlines()[-30:],
        }
    table = folder / "best_hparams.csv"
    return {
        "status": "ok" if done.returncode == 0 else "error",
        **({} if done.returncode == 0 else {"error": f"exit code {done.returncode}"}),
        "command": command[1:],
        "seconds": time.perf_counter() - started,
        "best_hparams": table.read_text().splitlines() if table.is_file() else None,
        "output_tail": (done.stdout + done.stderr).splitlines()[-30:],
    }


# --------------------------------------------------------------------------- Markdown
def _f(value: Any, form: str) -> str:
    return "—" if value is None else format(value, form)


def markdown(data: dict[str, Any]) -> str:
    sections, settings = data["sections"], data["settings"]
    env = sections.get("environment", {})
    lines = [
        "# Device check",
        "",
        f"{env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
        f"{settings['shapes_name']} shapes: ConvNet-D{settings['shapes']['depth']} width "
        f"{settings['shapes']['width']} (BatchNorm), "
        f"{'×'.join(map(str, settings['shapes']['image']))}, b {settings['shapes']['batch']}, "
        f"set {settings['shapes']['set_size']} (α {settings['shapes']['alpha']}), DSA; errors "
        f"against {_reference_name(settings)}; {data.get('seconds', 0):.0f} s in all.",
        "",
        "| N | row | E | status | first call s | s / iteration | trajectories/s | vs default "
        "| peak MiB | × floor | loss err | image-grad err | lr-grad err | within 1e-3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error')}"
        lines.append(
            f"| {row['n_steps']} | {row['row']} | {_trajectories(row['row'])} | {status} "
            f"| {_f(row.get('first_call_s'), '.3f')} | {_f(row.get('seconds'), '.4f')} "
            f"| {_f(row.get('trajectories_per_s'), '.2f')} "
            f"| {_f(row.get('speedup_vs_default'), '.2f')}× "
            f"| {_f(row.get('peak_mib'), '.0f')} | {_f(row.get('x_floor'), '.1f')} "
            f"| {_f(row.get('loss_rel_err'), '.1e')} | {_f(row.get('image_grad_rel_err'), '.1e')} "
            f"| {_f(row.get('lr_grad_rel_err'), '.1e')} | {row.get('within_1e-3', '—')} |"
        )
    lines += ["", "| section | status | figures |", "|---|---|---|"]
    for name in ("flops", "expert_epoch", "eval_epoch", "search"):
        section = sections.get(name, {"status": "not run"})
        lines.append(f"| {name} | {section.get('status')} | {_summary(name, section)} |")
    return "\n".join(lines) + "\n"


def _trajectories(row: str) -> int:
    return ROWS[row][2] if row in ROWS else 1


def _reference_name(settings: dict[str, Any]) -> str:
    if settings.get("reference") == FLOAT64:
        return "the default mode in float64"
    return f"the {REFERENCE} row"


def _summary(name: str, section: dict[str, Any]) -> str:
    if section.get("status") != "ok":
        return str(section.get("error", "")).replace("|", "/")
    if name == "flops":
        return "; ".join(
            f"N {n}: {v['flops']['default'] / 1e9:.3g} GFLOP default, "
            f"{v['flops']['memory-saving'] / 1e9:.3g} memory-saving, "
            f"{v['flops']['plain'] / 1e9:.3g} plain; floor "
            + (_f(v["floor_s"] and v["floor_s"]["bf16"], ".3g") + " s (bf16 peak)")
            for n, v in section["per_n"].items()
        )
    if name == "search" and section.get("kind") == "pipeline":
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in section["stages_s"].items())
        return (
            f"library pipeline of one quick-preset IPC 10 trial ({section['reason']}): "
            f"{stages}; test {100 * section['test_accuracy']:.2f} %"
        )
    if name == "search":
        table = section.get("best_hparams") or section.get("output_tail", [])[-1:]
        return f"{section['seconds']:.0f} s: " + " / ".join(table).replace("|", "/")
    return (
        f"{section['model']}: {section['images']} images in {section['seconds']:.2f} s "
        f"({section['images_per_s']:.0f} images/s)"
    )


# --------------------------------------------------------------------------- main
def resized(shapes: Shapes, args: argparse.Namespace) -> Shapes:
    """``shapes`` with the step's sizes given on the command line (a CPU measurement between
    tiny and the paper's)."""
    changes: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("width", "depth", "batch", "set_size")
        if getattr(args, name) is not None
    }
    if args.steps:
        changes["steps"] = tuple(int(n) for n in args.steps.split(","))
    if args.image_size:
        changes["image"] = (3, args.image_size, args.image_size)
    if args.repeats:
        changes |= {"max_repeats": args.repeats, "row_seconds": 1e9}  # JSON has no inf
    return replace(shapes, **changes)


def step_sections(
    report: Report, shapes: Shapes, device: torch.device, clock: Clock, reserve: float
) -> None:
    """The FLOP count and the step rows on one case, freed afterwards."""
    case = build_case(shapes, device)
    report.section("flops", guarded(partial(flops_section, case, shapes, device)))
    report.section(
        "step", guarded(partial(step_rows, report, case, shapes, device, clock, reserve))
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    clock = Clock(args.budget_s)
    shapes = resized(TINY if args.tiny else PAPER, args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = "tiny" if args.tiny else "paper CIFAR"
    if shapes != (TINY if args.tiny else PAPER):
        name = f"resized {name}"
    settings = {
        "shapes_name": name,
        "shapes": asdict(shapes),
        "budget_s": args.budget_s,
        "search": args.search,
        "rows": args.rows,
        "reference": args.reference,
        "argv": sys.argv[1:],
    }
    report = Report(args.out, settings)
    report.section("environment", guarded(partial(environment, device)))
    # the epochs need about a minute on a GPU; a search (or the pipeline) wants 90 s more
    searching = args.search in ("quick", "smoke", "pipeline")
    reserve = 20.0 if args.tiny else 150.0 if searching else 30.0
    step_sections(report, shapes, device, clock, reserve)
    for name, work in (("expert_epoch", expert_epoch), ("eval_epoch", eval_epoch)):
        if clock.left() < reserve / 3:
            report.section(name, {"status": "skipped", "error": "time budget spent"})
        else:
            report.section(name, guarded(partial(work, shapes, device)))
    report.section("search", search_section(args, device, clock))
    report.data["seconds"] = clock.elapsed()
    report.save()
    (args.out / "device_check.md").write_text(markdown(report.data))
    return report.data


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes for a CPU (width 8, 3×8×8, N 2 and 3, b 10); the "
        "search only as a dry run (default: the paper's CIFAR shapes)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks/results/device-check",
        help="folder of device_check.json and device_check.md "
        "(default: benchmarks/results/device-check)",
    )
    parser.add_argument("--device", default=None, help="default: cuda if there is one, else cpu")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="seconds for everything; rows are skipped and the search cut when "
        "it runs out (default: 450, inside 8 minutes with start-up)",
    )
    parser.add_argument(
        "--search",
        default=None,
        choices=("quick", "smoke", "dry", "pipeline", "skip"),
        help="the search to run: quick (the preset end to end), smoke, dry "
        "(--dry-run of smoke with levers set), pipeline (the quick preset's "
        "library work for one trial as selmatch commands, no Ray: what runs "
        "where Ray, Optuna or MLflow is missing) or skip (default: quick, dry "
        "with --tiny)",
    )
    parser.add_argument(
        "--search-out",
        default=None,
        help="parent folder of the search's output (default: a new temporary "
        "folder; only best_hparams.csv goes into the JSON)",
    )
    parser.add_argument("--data-root", default=None, help="passed to the search")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"the step rows to measure, comma-separated (default: all: {', '.join(ROWS)})",
    )
    parser.add_argument(
        "--reference",
        default=REFERENCE,
        choices=(REFERENCE, FLOAT64),
        help="what the rows' errors are measured against: the fp32 row (IEEE "
        "float32) or the default mode computed in float64 (default: fp32)",
    )
    sizes = parser.add_argument_group("step sizes (override the shapes chosen by --tiny or not)")
    sizes.add_argument("--width", type=int, default=None, help="ConvNet width")
    sizes.add_argument("--depth", type=int, default=None, help="ConvNet depth")
    sizes.add_argument("--batch", type=int, default=None, help="b, synthetic batch")
    sizes.add_argument("--steps", default=None, help="values of N, comma-separated")
    sizes.add_argument("--set-size", type=int, default=None, help="synthetic set size")
    sizes.add_argument("--image-size", type=int, default=None, help="PX: 3×PX×PX images")
    sizes.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per row, whatever they take (default: as many as "
        "fit the row's time budget, at most 10; 2 with --tiny)",
    )
    args = parser.parse_args()
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown or not rows:
        parser.error(f"--rows must name rows among {', '.join(ROWS)}; got {args.rows!r}")
    args.rows = rows
    if args.search is None:
        args.search = "dry" if args.tiny else "quick"
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s:g}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = run(args)
    print((args.out / "device_check.md").read_text())
    bad = [f"{r['row']} N={r['n_steps']}" for r in data["rows"] if r["status"] == "error"]
    bad += [name for name, s in data["sections"].items() if s.get("status") == "error"]
    print(f"errors: {', '.join(bad) or 'none'}; written to {args.out}/device_check.json and .md")


if __name__ == "__main__":
    main()
