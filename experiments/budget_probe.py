"""Why does distillation lower accuracy in the Fashion-MNIST study? A probe, at 1 % first.

In the study (plan v1, docs/study-log.md), MTT starts from exactly the random class-balanced
subset that the random-subset baseline evaluates (subset seed 0 of the same pool) and ends, after
200 matching iterations, 4.5 points below it. The study names its budget cuts as likely causes:
weak experts (2 x 5 epochs), few iterations (200), a pixel lr (1000) set for CIFAR. This
probe undoes them one or two at a time, against the study's own sets, with the study's
evaluation (``EVAL`` of ``fmnist_study.py``: the steps of 2 full-data epochs, 3 seeds):

- ``mtt-e5-it200``: the study's MTT again (its experts retrained): does it reproduce?
- ``mtt-e5-lr100-it200``: pixel lr 100 instead of 1000;
- ``mtt-e15-T10-it200``: experts of 2 x 15 epochs, start epochs up to T+ = 10 (not 3);
- ``mtt-e15-late-it200``: the 15-epoch experts, only their later training matched (start
  epochs in [8, 13), ``--min-start-epoch``, as DATM does for large IPC);
- ``mtt-e15-late-lr100-it200``: the same with pixel lr 100;
- ``mtt-e15-T10-lr100-it200``: 15-epoch experts and lr 100 with the early segments too (does
  the later range matter?);
- ``selmatch-e15-late-lr100-it200``: SelMatch (the study's searched β*, α* of the IPC) with
  the settings of ``mtt-e15-late-lr100-it200``;
- ``mtt-e5-it600``: 600 iterations (``mtt-e5-it200`` resumed for 400 more);
- ``mtt-e5-lr10-it200``: pixel lr 10.

``--ipc`` picks the IPC (default 60; the study's IPCs). Each step is skipped when its output
exists, so the probe resumes where it stopped; every evaluation is logged to MLflow
(``OUT/mlflow.db``, experiment ``fmnist-budget-probe``) and the tables go to
``experiments/results/fmnist-study/probe/``.

    python experiments/budget_probe.py --probes mtt-e15-late-lr100-it200 --ipc 300
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fmnist_study as study_module
from fmnist_study import ROOT, Study, distill_step, evaluate_step, log_to_mlflow, read_evaluations

RESULTS = study_module.RESULTS / "probe"
EXPERTS = {  # name: epochs per expert (2 experts, the study's other expert settings)
    "e5": 5,
    "e15": 15,
}
LATE = ("--min-start-epoch", "8", "--max-start-epoch", "13")  # of 15-epoch experts
#: name: (experts, extra distillation options, iterations, resumed from)
PROBES: dict[str, tuple[str, tuple[str, ...], int, str | None]] = {
    "mtt-e5-it200": ("e5", (), 200, None),
    "mtt-e5-lr100-it200": ("e5", ("--lr-images", "100"), 200, None),
    "mtt-e15-T10-it200": ("e15", ("--max-start-epoch", "10"), 200, None),
    "mtt-e15-late-it200": ("e15", LATE, 200, None),
    "mtt-e15-late-lr100-it200": ("e15", (*LATE, "--lr-images", "100"), 200, None),
    "mtt-e15-T10-lr100-it200": (
        "e15",
        ("--max-start-epoch", "10", "--lr-images", "100"),
        200,
        None,
    ),
    "selmatch-e15-late-lr100-it200": ("e15", (*LATE, "--lr-images", "100"), 200, None),
    "mtt-e5-it600": ("e5", (), 600, "mtt-e5-it200"),
    "mtt-e5-lr10-it200": ("e5", ("--lr-images", "10"), 200, None),
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
    "mtt-e15-late-lr100-it200": "experts 2 × 15 epochs, start epochs in [8, 13), pixel lr 100",
    "mtt-e15-T10-lr100-it200": "experts 2 × 15 epochs, start epochs in [0, 10), pixel lr 100",
    "selmatch-e15-late-lr100-it200": "SelMatch, experts 2 × 15 epochs, start epochs in [8, 13), "
    "pixel lr 100",
    "mtt-e5-lr10-it200": "pixel lr 10 (not 1000)",
}


def experts_step(study: Study, name: str) -> bool:
    folder = study.out / f"experts-{name}"
    return study.run(
        f"experts {name}",
        study.selmatch(
            "experts",
            "--width",
            "32",
            "--num-experts",
            "2",
            "--epochs",
            str(EXPERTS[name]),
            "--el2n-epoch",
            "2",
            "--no-progress",
            "--out",
            str(folder),
        ),
        folder / "scores.safetensors",
    )


def probe_step(study: Study, name: str, ipc: int = 60) -> bool:
    experts, extra, iterations, base = PROBES[name]
    out = study.out / f"{name}-ipc{ipc}"
    result = study.out / f"eval-{name}-ipc{ipc}.json"
    if not experts_step(study, experts):
        return False
    if base is not None and not (out / "checkpoint").exists() and not result.exists():
        source = study.out / f"{base}-ipc{ipc}"
        if not (source / "set.safetensors").exists():
            return False
        if not study.dry_run:  # go on from the base's last checkpoint
            shutil.copytree(source, out)
            (out / "set.safetensors").unlink()
    method = name.partition("-")[0]
    beta, alpha = searched(ipc) if method == "selmatch" else (0.0, 1.0)
    ok = distill_step(
        study,
        method,
        ipc,
        beta,
        alpha,
        str(study.out / f"experts-{experts}"),
        out,
        iterations=iterations,
        extra=extra,
    )
    return ok and evaluate_step(study, name, "--set", str(out), result=result)


def searched(ipc: int) -> tuple[float, float]:
    """β*, α* of ``ipc`` as the study's search chose them."""
    with open(study_module.RESULTS / "best_hparams.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["ipc"]) == ipc)
    return float(row["beta"]), float(row["alpha"])


def collect(out: Path) -> None:
    rows = read_evaluations(out)
    log_to_mlflow(out, "fmnist-budget-probe", rows)
    with open(study_module.RESULTS / "results.csv", newline="") as handle:
        study_rows = {(r["method"], int(r["ipc"])): r for r in csv.DictReader(handle)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tables = []
    for ipc in sorted({r["ipc"] for r in rows}):
        reference = [
            study_rows[(m, ipc)]
            for m in ("random", "window", "distill-mtt", "distill-selmatch")
            if (m, ipc) in study_rows
        ]
        base = next((float(r["test_mean"]) for r in reference if r["method"] == "random"), None)
        lines = [f"| IPC {ipc} | test % (3 seeds) | Δ vs the random subset |", "|---|---|---|"]
        for row in [*reference, *(r for r in rows if r["ipc"] == ipc)]:
            mean, std = 100 * float(row["test_mean"]), 100 * float(row["test_std"])
            delta = "" if base is None else f"{mean - 100 * base:+.2f}"
            label = LABELS.get(row["method"], row["method"])
            lines.append(f"| {label} | {mean:.2f} ± {std:.2f} | {delta} |")
        tables.append("\n".join(lines) + "\n")
    (RESULTS / "tables.md").write_text("\n".join(tables))
    for path in out.glob("eval-*.json"):
        (RESULTS / path.name).write_bytes(path.read_bytes())
    for row in rows:
        folder = f"{row['method']}-ipc{row['ipc']}"
        for file in ("grid.png", "loss.csv", "loss.png", "manifest.json"):
            if (out / folder / file).exists():
                (RESULTS / f"{folder}-{file}").write_bytes((out / folder / file).read_bytes())
    if (out / "steps.log").exists():
        shutil.copyfile(out / "steps.log", RESULTS / "steps.log")
    print(f"[probe] {len(rows)} evaluations: {RESULTS / 'tables.md'}; MLflow: {out / 'mlflow.db'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "fmnist-probe",
        help="working folder (default: runs/fmnist-probe)",
    )
    parser.add_argument(
        "--probes",
        default=",".join(PROBES),
        help=f"which probes, in order (default: {','.join(PROBES)})",
    )
    parser.add_argument(
        "--ipc",
        type=int,
        default=60,
        choices=study_module.PLANS["v1"].ipcs,
        help="images per class (default: 60)",
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no new step after this many minutes",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    names = args.probes.split(",")
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        parser.error(f"--probes must be among {','.join(PROBES)}, got {','.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    study = Study(args.out, dry_run=args.dry_run, stop_after=args.stop_after)
    for name in names:
        if not probe_step(study, name, args.ipc):
            break
    if not args.dry_run:
        collect(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
