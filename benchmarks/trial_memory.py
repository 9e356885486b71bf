"""Peak memory of one α trial against the number of experts: the trial as it was (every expert's
whole trajectory copied out of Ray's object store; the baseline, measured in the same run) and
as it is since c920b10 (one object per expert holding epochs [T−, T+ + M], read a segment at a
time through ``ObjectStoreTrajectories``).

    python benchmarks/trial_memory.py --experts 2,20,100 --out benchmarks/results/trial_memory.json
    python benchmarks/trial_memory.py --smoke      # seconds: a narrow model, 2 and 4 experts

The experts have the paper preset's shape (ConvNet width 128, BatchNorm, 3×32×32 images, 10
classes, 101 snapshots: ``experts.epochs`` = 100; T− = 0, T+ = 80, M = 2, so the new layout keeps
epochs 0..82) with synthetic values; the driver puts them into the object store as
``tune/flow/precompute.py`` does (one driver-owned ``ray.put`` of a numpy array per expert). Each
trial runs in a fresh worker process (a Ray task with ``max_calls=1``): it builds the experts as the
trial does and runs the library's ``selmatch.distillation.distill.distill`` for a few iterations
with a small N and b, so that the experts dominate its memory (the trial's evaluation afterwards
does not depend on the experts and is left out). Memory: the process's RSS when the trial body
starts and its peak RSS at the end (``ru_maxrss``: shared object-store pages the process touched
count too), and ``torch.cuda.max_memory_allocated`` on a GPU.

The old layout needs 2 × 129 MB per expert at the paper's shape (the store and the trial's
copy): it is measured up to ``--before-up-to`` experts and extrapolated linearly beyond. Counts
whose objects do not fit the free memory are extrapolated the same way from the two largest
measured counts; the output, the JSON and the table say which values are extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from selmatch.data import ImageDataset, holdout_split
from selmatch.distillation.distill import DistillConfig, distill
from selmatch.distillation.target import SetSpec
from selmatch.training.experts import ExpertConfig, InMemoryExperts
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout
from selmatch_tune.flow.precompute import dataset_arrays, dataset_from_arrays
from selmatch_tune.flow.search import matched_epochs
from selmatch_tune.flow.trials import ObjectStoreTrajectories
from selmatch_tune.settings.presets import paper

SHAPE = (3, 32, 32)
CLASSES = 10
TARGET_RATIO = 1.25  # the new trial's peak at the largest count over its peak at the smallest
RESERVE = 4 * 2**30  # memory left for the driver, Ray's daemons and the trial's own work
MIB = 2**20


@dataclass(frozen=True)
class Case:
    """What every trial of the run matches: the experts' settings and the distillation's."""

    experts: ExpertConfig
    layout: ParamLayout
    target: SetSpec
    distill: DistillConfig
    device: str

    @property
    def snapshot_bytes(self) -> int:
        return self.layout.numel * 4  # float32


def build_case(args: argparse.Namespace) -> Case:
    """The paper preset's experts and matching range, with a small N, b and IPC."""
    preset = paper()
    model = ModelConfig(width=args.width, norm=preset.experts.model.norm)
    layout = ParamLayout.of(build_model(model, SHAPE, CLASSES, seed=0))
    experts = replace(preset.experts, model=model)
    matching = replace(
        preset.distill,
        n_student_steps=args.student_steps,
        syn_batch=args.syn_batch,
        iterations=args.iterations,
        checkpoint_every=args.iterations,
    )
    target = SetSpec(method="selmatch", init="random", ipc=args.ipc, alpha=0.5)
    return Case(experts, layout, target, matching, args.device)


def synthetic_dataset(per_class: int, seed: int = 0) -> ImageDataset:
    """Random uint8 images of CIFAR-10's shape, ``per_class`` training images per class."""
    generator = torch.Generator().manual_seed(seed)

    def part(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (count * CLASSES, *SHAPE), generator=generator)
        return images.to(torch.uint8), torch.arange(count * CLASSES) % CLASSES

    (train_images, train_labels), (test_images, test_labels) = part(per_class), part(2)
    return ImageDataset(
        "synthetic-cifar10",
        train_images,
        train_labels,
        test_images,
        test_labels,
        tuple(str(c) for c in range(CLASSES)),
        (0.5,) * 3,
        (0.25,) * 3,
        "random pixels",
    )


def trajectory(base: np.ndarray, epochs: range, expert: int) -> np.ndarray:
    """Expert ``expert``'s snapshots after ``epochs``: the initial weights plus small noise,
    the same row for an epoch whichever range it is asked in."""
    rows = np.empty((len(epochs), len(base)), dtype=np.float32)
    for row, epoch in zip(rows, epochs, strict=True):
        noise = np.random.default_rng([expert, epoch]).standard_normal(len(base), np.float32)
        np.multiply(noise, 0.01, out=row)
        row += base
    return rows


def put_experts(case: Case, count: int, epochs: range) -> list[ray.ObjectRef]:
    """As ``tune/flow/precompute.py``: one driver-owned object per expert, a numpy array."""
    base = case.layout.flatten(build_model(case.experts.model, SHAPE, CLASSES, seed=0)).numpy()
    return [ray.put(trajectory(base, epochs, i)) for i in range(count)]


def before_experts(case: Case, data: dict[str, Any], device: torch.device) -> tuple[Any, list]:
    """The trial as it was (before c920b10): every whole trajectory copied out of the store
    into the trial's memory. Distillation then moved them all to the device; on a GPU the
    copies are kept there for the run, as it did."""
    loaded = [torch.from_numpy(np.array(ray.get(ref))) for ref in data["trajectories"]]
    resident = [t.to(device) for t in loaded] if device.type == "cuda" else []
    return InMemoryExperts(case.experts, case.layout, loaded), resident


def after_experts(case: Case, data: dict[str, Any], device: torch.device) -> tuple[Any, list]:
    """The trial as it is (tune/flow/trials.py ``alpha_trial``): one expert fetched zero-copy per
    draw, released once its two snapshots are copied."""
    trajectories = ObjectStoreTrajectories(data["trajectories"])
    return InMemoryExperts(
        case.experts, case.layout, trajectories, first_epoch=data["first_epoch"]
    ), []


VERSIONS: dict[str, Callable[[Case, dict[str, Any], torch.device], tuple[Any, list]]] = {
    "before": before_experts,
    "after": after_experts,
}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@ray.remote(max_calls=1)  # a fresh worker process per trial, gone after it
def measure_trial(version: str, case: Case, data: dict[str, Any]) -> dict[str, Any]:
    """One α trial's distillation in this (fresh) process, and its memory."""
    rss_start = _status_mib("VmRSS")
    torch.set_num_threads(1)
    device = torch.device(case.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dataset = dataset_from_arrays(ray.get(data["dataset"]))
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=case.experts.val_fraction,
        seed=case.experts.split_seed,
    )
    experts, resident = VERSIONS[version](case, data, device)
    peak_fetched = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as directory:
        synthetic = distill(
            case.target,
            case.distill,
            dataset,
            split,
            experts,
            None,
            directory,
            device=case.device,
            progress=False,
        )
    del resident
    return {
        "rss_start_mib": rss_start,
        "peak_rss_after_fetch_mib": peak_fetched,
        "peak_rss_mib": _peak_rss_mib(),
        "store_pages_touched_mib": _status_mib("RssShmem"),
        "peak_cuda_mib": (
            torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
        ),
        "final_loss": synthetic.manifest["final_loss"],
        "pid": os.getpid(),
    }


def measure(
    version: str, case: Case, counts: Sequence[int], epochs: range, dataset_ref: ray.ObjectRef
) -> dict[int, dict[str, Any]]:
    """The trial ``version`` at each count of experts, the largest count's objects put once
    (a trial with n experts gets the first n); they are freed on return."""
    refs = put_experts(case, max(counts), epochs)
    task = measure_trial.options(num_gpus=1 if case.device.startswith("cuda") else 0)
    results = {}
    for count in counts:
        data = {"dataset": dataset_ref, "trajectories": refs[:count], "first_epoch": epochs.start}
        results[count] = ray.get(task.remote(version, case, data))
        results[count]["store_mib"] = count * len(epochs) * case.snapshot_bytes / MIB
        print(
            f"  {version} {count:>4} experts: RSS {results[count]['rss_start_mib']:7.0f} → "
            f"peak {results[count]['peak_rss_mib']:7.0f} MiB"
        )
    return results


def extrapolate(measured: dict[int, float], count: int) -> float:
    """Linear in the number of experts through the two largest measured counts."""
    (low, y_low), (high, y_high) = sorted(measured.items())[-2:]
    return y_high + (y_high - y_low) / (high - low) * (count - high)


def _free_bytes() -> int:
    """What the object store and the trials may use: the smaller of /dev/shm's free space and
    the memory available, less a reserve."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    shm = os.statvfs("/dev/shm")
    return min(available, shm.f_bavail * shm.f_frsize) - RESERVE


def plan(
    counts: list[int], before_up_to: int, case: Case, full: range, kept: range, free: int
) -> tuple[list[int], list[int]]:
    """The counts measured for each version: the old one needs its objects twice (the store
    and the trial's copy), the new one once; a count past what fits is replaced by the largest
    that fits, and the requested one extrapolated."""
    per_before, per_after = 2 * len(full) * case.snapshot_bytes, len(kept) * case.snapshot_bytes
    before = fitting_counts(counts, min(before_up_to, free // per_before))
    after = fitting_counts(counts, free // per_after)
    for version, measured in (("before", before), ("after", after)):
        if len(measured) < 2 and len(measured) < len(counts):
            raise SystemExit(
                f"{version}: fewer than two counts of experts fit ({measured}); "
                "nothing to extrapolate from"
            )
    return before, after


def fitting_counts(counts: list[int], limit: int) -> list[int]:
    kept = [c for c in counts if c <= limit]
    if len(kept) < len(counts) and limit > max(kept, default=0):
        kept.append(limit)  # the largest count that fits, to extrapolate from
    return kept


def table(counts: list[int], results: dict[str, dict[int, dict[str, Any]]]) -> list[dict]:
    """Per count and version: the measured peak, or one extrapolated from the measured ones."""
    rows = []
    for count in counts:
        row: dict[str, Any] = {"experts": count}
        for version, measured in results.items():
            if count in measured:
                row[version] = measured[count] | {"extrapolated": False}
            else:
                peaks = {n: m["peak_rss_mib"] for n, m in measured.items()}
                row[version] = {
                    "peak_rss_mib": extrapolate(peaks, count),
                    "extrapolated": True,
                    "extrapolated_from": sorted(peaks)[-2:],
                }
        rows.append(row)
    return rows


def report(rows: list[dict], extra: list[int], ratio: float, ratio_extrapolated: bool) -> None:
    def cell(entry: dict[str, Any]) -> str:
        if entry["extrapolated"]:
            return f"{'':>7}   {entry['peak_rss_mib']:7.0f}*"
        return f"{entry['rss_start_mib']:7.0f} → {entry['peak_rss_mib']:7.0f} "

    print(f"\n{'experts':>7} | {'before: start → peak MiB':>24} | {'after: start → peak MiB':>24}")
    for row in rows:
        print(f"{row['experts']:>7} | {cell(row['before']):>24} | {cell(row['after']):>24}")
    if any(r["before"]["extrapolated"] or r["after"]["extrapolated"] for r in rows):
        print(
            "* extrapolated linearly in the number of experts from the two largest measured "
            "counts (not measured: too large for this machine's memory)"
        )
    if extra:
        print(f"  (measured only to extrapolate from: {extra} experts)")
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"after: peak RSS at {rows[-1]['experts']} experts / at {rows[0]['experts']} = "
        f"{ratio:.3f}{' (extrapolated)' if ratio_extrapolated else ''} "
        f"(target ≤ {TARGET_RATIO}: {verdict})"
    )


def parse_counts(text: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        counts = sorted({int(c) for c in text.split(",")})
    except ValueError:
        parser.error(f"--experts must be comma-separated integers, got {text!r}")
    if len(counts) < 2 or counts[0] < 1:
        parser.error(f"--experts needs at least two counts ≥ 1, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experts", default=None, help="counts of experts (default: 2,20,100; --smoke: 2,4)"
    )
    parser.add_argument(
        "--before-up-to",
        type=int,
        default=20,
        help="measure the old trial up to this many experts, extrapolate beyond (default: 20)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="width 8, 2 and 4 experts: seconds, for the tests"
    )
    parser.add_argument("--width", type=int, default=None, help="ConvNet width (default: 128)")
    parser.add_argument("--ipc", type=int, default=2, help="images per class (default: 2)")
    parser.add_argument(
        "--per-class",
        type=int,
        default=30,
        help="synthetic training images per class (default: 30)",
    )
    parser.add_argument("--student-steps", type=int, default=2, help="N (default: 2)")
    parser.add_argument("--syn-batch", type=int, default=10, help="b (default: 10)")
    parser.add_argument("--iterations", type=int, default=3, help="matching iterations (3)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when present)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    args.width = args.width or (8 if args.smoke else 128)
    counts = parse_counts(args.experts or ("2,4" if args.smoke else "2,20,100"), parser)
    run(args, counts)


def run(args: argparse.Namespace, counts: list[int]) -> None:
    case = build_case(args)
    full = range(case.experts.epochs + 1)  # the old layout: every snapshot, epochs 0..E
    first, last = matched_epochs(paper())
    kept = range(first, last + 1)
    free = _free_bytes()
    before, after = plan(counts, args.before_up_to, case, full, kept, free)
    store = max(max(before) * len(full), max(after) * len(kept)) * case.snapshot_bytes
    print(
        f"{case.device}: ConvNet width {args.width}, P = {case.layout.numel:,} "
        f"({case.snapshot_bytes / MIB:.2f} MiB a snapshot); before: {len(full)} snapshots an "
        f"expert, after: epochs {first}..{last}; {free / 2**30:.1f} GiB free for the store and "
        f"trials; measured: before {before}, after {after}"
    )
    # the store holds one version's objects at a time; room for both in case the first
    # version's are not yet released when the second's are put
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=int(min(free, 2 * store + 2**30)),
    )
    try:
        dataset_ref = ray.put(dataset_arrays(synthetic_dataset(args.per_class)))
        results = {
            "before": measure("before", case, before, full, dataset_ref),
            "after": measure("after", case, after, kept, dataset_ref),
        }
    finally:
        ray.shutdown()
    rows = table(counts, results)
    extra = sorted(set(before + after) - set(counts))
    low, high = rows[0]["after"], rows[-1]["after"]
    ratio = high["peak_rss_mib"] / low["peak_rss_mib"]
    ratio_extrapolated = high["extrapolated"] or low["extrapolated"]
    report(rows, extra, ratio, ratio_extrapolated)
    if args.out:
        write_json(args, case, rows, results, kept, ratio, ratio_extrapolated)


def write_json(
    args: argparse.Namespace,
    case: Case,
    rows: list[dict],
    results: dict[str, dict[int, dict[str, Any]]],
    kept: range,
    ratio: float,
    ratio_extrapolated: bool,
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "device": case.device,
                "device_name": (
                    torch.cuda.get_device_name(case.device)
                    if case.device.startswith("cuda")
                    else None
                ),
                "torch": torch.__version__,
                "ray": ray.__version__,
                "settings": vars(args) | {"out": str(args.out)},
                "shape": {
                    "width": args.width,
                    "norm": case.experts.model.norm,
                    "image_shape": list(SHAPE),
                    "classes": CLASSES,
                    "parameters": case.layout.numel,
                    "snapshots_before": case.experts.epochs + 1,
                    "epochs_after": [kept.start, kept.stop - 1],
                },
                "rows": rows,
                "measured": {v: sorted(r) for v, r in results.items()},
                "extrapolation": "values marked extrapolated are linear in the number of experts "
                "through the two largest measured counts (extrapolated_from); not measured: too "
                "large for this machine's memory",
                "ratio": ratio,
                "ratio_extrapolated": ratio_extrapolated,
                "target_ratio": TARGET_RATIO,
                "target_met": ratio <= TARGET_RATIO,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
