"""Why does distillation lower accuracy in the Fashion-MNIST study? A probe at 1 % (IPC 60).

In the study (docs/results.md), MTT starts from exactly the random class-balanced subset that
the random-subset baseline evaluates (subset seed 0 of the same pool) and ends, after 200
matching iterations, 4.5 points below it. The study names three budget cuts as likely
causes: weak experts (2 x 5 epochs), few iterations (200), a pixel lr (1000) set for
CIFAR. This probe changes one of them at a time against the study's own MTT, with the
study's evaluation (``EVAL`` of ``fmnist_study.py``: 196 epochs, 3 seeds, DSA):

- ``mtt-e5-it200``: the study's MTT again (its experts retrained): does it reproduce?
- ``mtt-e5-lr100-it200``: pixel lr 100 instead of 1000;
- ``mtt-e15-T10-it200``: experts of 2 x 15 epochs, start epochs up to T+ = 10 (not 3);
- ``mtt-e5-it600``: 600 iterations (``mtt-e5-it200`` resumed for 400 more);
- ``mtt-e15-late-it200``: the 15-epoch experts, only their later training matched (start
  epochs in [8, 13), ``--min-start-epoch``, as DATM does for large IPC);
- ``mtt-e15-late-lr100-it200``: the same with pixel lr 100;
- ``mtt-e5-lr10-it200``: pixel lr 10;
- ``selmatch-e5-lr100-it200``: SelMatch at the study's searched β*, α* with pixel lr 100 (the
  study's SelMatch: lr 1000).

A probe named ``selmatch-…`` distils with SelMatch (β*, α* of IPC 60 from the study's
``best_hparams.csv``), the others with MTT.

Each step is skipped when its output exists, so the probe resumes where it stopped; every
evaluation is logged to MLflow (``OUT/mlflow.db``, experiment ``fmnist-budget-probe``) and the
table goes to ``experiments/results/fmnist-study/probe/``.

    python experiments/budget_probe.py --stop-after 80
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fmnist_study as study_module
from fmnist_study import EVAL, ROOT, Study, distill_step, log_to_mlflow, read_evaluations

IPC = 60
RESULTS = study_module.RESULTS / "probe"
EXPERTS = {  # name: epochs per expert (2 experts, the study's other expert settings)
    "e5": 5,
    "e15": 15,
}
#: name: (experts, extra distillation options, iterations, resumed from)
PROBES: dict[str, tuple[str, tuple[str, ...], int, str | None]] = {
    "mtt-e5-it200": ("e5", (), 200, None),
    "mtt-e5-lr100-it200": ("e5", ("--lr-images", "100"), 200, None),
    "mtt-e15-T10-it200": ("e15", ("--max-start-epoch", "10"), 200, None),
    "mtt-e5-it600": ("e5", (), 600, "mtt-e5-it200"),
    "mtt-e15-late-it200": ("e15", ("--min-start-epoch", "8", "--max-start-epoch", "13"), 200, None),
    "mtt-e15-late-lr100-it200": (
        "e15",
        ("--min-start-epoch", "8", "--max-start-epoch", "13", "--lr-images", "100"),
        200,
        None,
    ),
    "mtt-e5-lr10-it200": ("e5", ("--lr-images", "10"), 200, None),
    "selmatch-e5-lr100-it200": ("e5", ("--lr-images", "100"), 200, None),
}
LABELS = {
    "random": "random subset (= MTT's initial images), from the study",
    "window": "oracle window (= SelMatch's initial images), from the study",
    "distill-mtt": "MTT, the study's (experts 2 × 5 epochs, T+ 3, lr 1000, 200 iterations)",
    "distill-selmatch": "SelMatch, the study's (β*, α*, the same budget as its MTT)",
    "mtt-e5-it200": "the same, experts retrained (reproduction)",
    "mtt-e5-lr100-it200": "pixel lr 100 (not 1000)",
    "mtt-e15-T10-it200": "experts 2 × 15 epochs, T+ 10 (not 2 × 5, T+ 3)",
    "mtt-e5-it600": "600 iterations (not 200)",
    "mtt-e15-late-it200": "experts 2 × 15 epochs, start epochs in [8, 13) (later training only)",
    "mtt-e15-late-lr100-it200": "the same with pixel lr 100",
    "mtt-e5-lr10-it200": "pixel lr 10 (not 1000)",
    "selmatch-e5-lr100-it200": "SelMatch with pixel lr 100 (not 1000)",
}


def experts_step(study: Study, name: str) -> bool:
    folder = study.out / f"experts-{name}"
    return study.run(f"experts {name}", study.selmatch(
        "experts", "--width", "32", "--experts", "2", "--epochs", str(EXPERTS[name]),
        "--el2n-epoch", "2", "--no-progress", "--out", str(folder),
    ), folder / "scores.safetensors")  # fmt: skip


def probe_step(study: Study, name: str) -> bool:
    experts, extra, iterations, base = PROBES[name]
    out = study.out / f"{name}-ipc{IPC}"
    result = study.out / f"eval-{name}-ipc{IPC}.json"
    if not experts_step(study, experts):
        return False
    if base is not None and not (out / "checkpoint").exists() and not result.exists():
        source = study.out / f"{base}-ipc{IPC}"
        if not (source / "set.safetensors").exists():
            return False
        if not study.dry_run:  # go on from the base's last checkpoint
            shutil.copytree(source, out)
            (out / "set.safetensors").unlink()
    method = name.partition("-")[0]
    beta, alpha = searched() if method == "selmatch" else (0.0, 1.0)
    ok = distill_step(study, method, IPC, beta, alpha, str(study.out / f"experts-{experts}"),
                      out, iterations=iterations, extra=extra)  # fmt: skip
    return ok and study.run(f"evaluate {name}", study.selmatch(
        "evaluate", "--set", str(out), *EVAL, "--out", str(result)), result)  # fmt: skip


def searched() -> tuple[float, float]:
    """β*, α* of IPC 60 as the study's search chose them."""
    with open(study_module.RESULTS / "best_hparams.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["ipc"]) == IPC)
    return float(row["beta"]), float(row["alpha"])


def collect(out: Path) -> None:
    rows = read_evaluations(out)
    log_to_mlflow(out, "fmnist-budget-probe", rows)
    with open(study_module.RESULTS / "results.csv", newline="") as handle:
        study_rows = {(r["method"], int(r["ipc"])): r for r in csv.DictReader(handle)}
    reference = [study_rows[(m, IPC)] for m in ("random", "window", "distill-mtt",
                 "distill-selmatch") if (m, IPC) in study_rows]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"| IPC {IPC} | test % (3 seeds) | Δ vs the random subset |", "|---|---|---|"]
    base = next((float(r["test_mean"]) for r in reference if r["method"] == "random"), None)
    for row in [*reference, *rows]:
        mean, std = 100 * float(row["test_mean"]), 100 * float(row["test_std"])
        delta = "" if base is None else f"{mean - 100 * base:+.2f}"
        name = row["method"].removesuffix(f"-ipc{IPC}")
        lines.append(f"| {LABELS.get(name, name)} | {mean:.2f} ± {std:.2f} | {delta} |")
    (RESULTS / "tables.md").write_text("\n".join(lines) + "\n")
    for path in out.glob("eval-*.json"):
        (RESULTS / path.name).write_bytes(path.read_bytes())
    for name in PROBES:
        for file in ("grid.png", "loss.csv", "loss.png", "manifest.json"):
            path = out / f"{name}-ipc{IPC}" / file
            if path.exists():
                (RESULTS / f"{name}-{file}").write_bytes(path.read_bytes())
    if (out / "steps.log").exists():
        shutil.copyfile(out / "steps.log", RESULTS / "steps.log")
    print(f"[probe] {len(rows)} evaluations: {RESULTS / 'tables.md'}; MLflow: {out / 'mlflow.db'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fmnist-probe",
                        help="working folder (default: runs/fmnist-probe)")  # fmt: skip
    parser.add_argument("--probes", default=",".join(PROBES),
                        help=f"which probes, in order (default: {','.join(PROBES)})")  # fmt: skip
    parser.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                        help="start no new step after this many minutes")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    names = args.probes.split(",")
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        parser.error(f"--probes must be among {','.join(PROBES)}, got {','.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    study = Study(args.out, dry_run=args.dry_run, stop_after=args.stop_after)
    for name in names:
        if not probe_step(study, name):
            break
    if not args.dry_run:
        collect(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
