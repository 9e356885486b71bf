"""Does the study's evaluation budget rank the sets as a longer one does? (issue 19, item 4)

The study trains every set for the steps of 2 full-data epochs; the paper's rule is 50. Here
the random subset, the oracle window and the SelMatch set are trained with the study's
protocol (ConvNet width 32, SGD lr 0.1 cosine, batch 128; DSA on real subsets, combined
augmentation on the SelMatch set) for the steps of 2 and of 10 full-data epochs, with the
current code (the fidelity fixes in). 2 epochs: 3 seeds (as the study), one JSON per set;
10 epochs: ``--seeds-long`` seeds (default 1: five times the cost per seed), one JSON per set
and seed (``SET-ipcN-full10.json`` is seed 0's, ``...-full10-seedS.json`` seed S's), so more
seeds can be added later. Files in ``experiments/results/eval-budget/`` are skipped when they
exist.

- IPC 60 (1 %): the plan-v2 sets, committed whole.
- IPC 300 (5 %) and 600 (10 %): the plan-v3 study's window at β* and SelMatch as searched.
  Where the study's own run folder (``runs/fmnist-study-v3``) still holds them they are used
  as they are, and their 2-epoch rows are the study's own evaluations (the same sets, protocol
  and seeds), copied with their source named. Otherwise (a fresh machine: sets of 9–19 MB are
  not committed) the study's own steps make them again from its search
  (``runs/fmnist-study-v3/search``) into ``runs/eval-budget-sets`` and both budgets are
  evaluated. The random subset's 2-epoch row is always the study's own evaluation, copied.

    python experiments/eval_budget.py              # IPC 60
    python experiments/eval_budget.py --ipc 300    # IPC 300
    python experiments/eval_budget.py --ipc 600 --seeds-long 2 --sets random,selmatch
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fmnist_study as study_module

from selmatch.core.io import write_json
from selmatch.data import balanced_subset, holdout_split, load_dataset
from selmatch.evaluation.evaluate import EvalConfig, evaluate_set
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "eval-budget"
STUDY = study_module.PLANS["v3"]
#: the plan-v3 study's run folder, where its sets are while the machine that made them lives
STUDY_RUNS = ROOT / "runs" / STUDY.folder
#: where each IPC's window and SelMatch sets are made again when the study's are gone
SETS = {
    60: ROOT / "experiments" / "results" / "fmnist-study-v2" / "ipc60-sets",
    300: ROOT / "runs" / "eval-budget-sets",
    600: ROOT / "runs" / "eval-budget-sets",
}
PERCENT = {60: "1 %", 300: "5 %", 600: "10 %"}
NAMES = ("random", "window", "selmatch")
#: each set's folder in a study run folder
FOLDERS = {"window": "window-ipc{ipc}", "selmatch": "distill-selmatch-ipc{ipc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds-long", type=int, default=1, help="seeds of the 10-epoch evaluations (default: 1)"
    )
    parser.add_argument(
        "--ipc",
        type=int,
        default=60,
        choices=sorted(SETS),
        help="images per class of the sets compared (default: 60)",
    )
    parser.add_argument(
        "--sets",
        default=",".join(NAMES),
        metavar="A,B",
        help=f"the sets evaluated, among {', '.join(NAMES)} (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = args.sets.split(",")
    if not chosen or not set(chosen) <= set(NAMES):
        parser.error(f"--sets must be among {', '.join(NAMES)}, got {args.sets!r}")
    ipc, sets_dir = args.ipc, SETS[args.ipc]
    OUT.mkdir(parents=True, exist_ok=True)
    if ipc != 60:  # the plan-v3 study's sets: its own, or made again; its 2-epoch rows, copied
        if all(has_set(STUDY_RUNS, name, ipc) for name in FOLDERS):
            sets_dir = STUDY_RUNS
            for name in FOLDERS:
                copy_study_evaluation(name, ipc)
        else:
            rebuild(sets_dir, ipc)
        copy_study_evaluation("random", ipc)
    missing = [name for name in FOLDERS if not has_set(sets_dir, name, ipc)]
    if missing:
        parser.error(f"--ipc {ipc}: no {', '.join(missing)} set under {sets_dir}")
    dataset = load_dataset("fashion-mnist")
    split = holdout_split(dataset.train_labels, dataset.num_classes)
    random = balanced_subset(dataset.train_labels, 10, ipc, seed=0, among=split.pool)
    window = SyntheticSet.load(sets_dir / FOLDERS["window"].format(ipc=ipc))
    selmatch = SyntheticSet.load(sets_dir / FOLDERS["selmatch"].format(ipc=ipc))
    print(f"[budget] IPC {ipc}: the window and SelMatch sets from {sets_dir}", flush=True)
    sets = {
        "random": (dataset.train_images[random], dataset.train_labels[random], None, "dsa"),
        "window": (window.images, window.labels, None, "dsa"),
        "selmatch": (selmatch.images, selmatch.labels, selmatch.distill_mask, "combined"),
    }
    runs = [(name, 2.0, 3, 0, OUT / f"{name}-ipc{ipc}-full2.json") for name in chosen]
    runs += [
        (name, 10.0, 1, seed, long_path(name, ipc, seed))
        for seed in range(args.seeds_long)
        for name in chosen
    ]
    for name, full_epochs, seeds, first, path in runs:
        images, labels, mask, augment = sets[name]
        if not path.exists():
            config = EvalConfig(
                model=ModelConfig(width=32),
                train=TrainConfig(augment=augment),
                num_seeds=seeds,
                seed=first,
                full_epochs=full_epochs,
            )
            started = time.perf_counter()
            result = evaluate_set(images, labels, dataset, config, split=split, dsa_mask=mask)
            write_json(
                path,
                {
                    "set": name,
                    "ipc": ipc,
                    "full_epochs": full_epochs,
                    "augment": augment,
                    "result": result.to_dict(),
                    "seconds": time.perf_counter() - started,
                },
            )
            print(f"[budget] {name} full:{full_epochs:g}: {result.summary()}", flush=True)
    print(table(ipc))
    return 0


def rebuild(out: Path, ipc: int) -> None:
    """The study's window and SelMatch set at ``ipc``, made again by its own steps (a set is
    skipped when it is there)."""
    search = ROOT / "runs" / STUDY.folder / "search"
    if not (search / "best_hparams.csv").exists():
        raise SystemExit(
            f"--ipc {ipc}: no search in {search}; run experiments/fmnist_study.py --plan v3 first"
        )
    row = study_module.winners(search)[ipc]
    out.mkdir(parents=True, exist_ok=True)
    study = study_module.Study(out, dry_run=False, stop_after=None, plan=STUDY)
    study_module.window_step(study, ipc, row)
    study_module.selmatch_step(study, ipc, row)


def has_set(folder: Path, name: str, ipc: int) -> bool:
    return (folder / FOLDERS[name].format(ipc=ipc) / "set.safetensors").exists()


def copy_study_evaluation(name: str, ipc: int) -> None:
    """A 2-epoch row that is the study's own 3-seed evaluation of the same set (the same
    protocol and seeds): the random subset's always, the window's and SelMatch's when their sets
    are the study's own."""
    study_name = {"random": "random-ipc{ipc}", **FOLDERS}[name].format(ipc=ipc)
    found = STUDY_RUNS / f"eval-{study_name}.json"
    if not found.exists():
        found = STUDY.results / "evals" / found.name
    path = OUT / f"{name}-ipc{ipc}-full2.json"
    if path.exists() or not found.exists():
        return
    record = json.loads(found.read_text())
    write_json(
        path,
        {
            "set": name,
            "ipc": ipc,
            "full_epochs": 2.0,
            "augment": record["config"]["train"]["augment"],
            "result": record["result"],
            "seconds": record.get("wall_seconds"),
            "source": f"the plan-v3 study's {found.name}",
        },
    )


def long_path(name: str, ipc: int, seed: int) -> Path:
    """The 10-epoch evaluation of one seed (seed 0's file kept its first name)."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    return OUT / f"{name}-ipc{ipc}-full10{suffix}.json"


def table(ipc: int = 60) -> str:
    lines = [
        f"| set (IPC {ipc}, {PERCENT[ipc]}) | 2 full-data epochs | 10 full-data epochs |",
        "|---|---|---|",
    ]
    for name in NAMES:
        cells = []
        for paths in (
            [OUT / f"{name}-ipc{ipc}-full2.json"],
            sorted(OUT.glob(f"{name}-ipc{ipc}-full10*.json")),
        ):
            results: list[dict[str, Any]] = [
                json.loads(p.read_text())["result"] for p in paths if p.exists()
            ]
            test = [a for r in results for a in r["test_accuracy"]]
            val = [a for r in results for a in r["val_accuracy"]]
            if not test:
                cells.append("—")
                continue
            cells.append(
                f"{100 * statistics.fmean(test):.2f} ± {100 * statistics.pstdev(test):.2f} "
                f"(val {100 * statistics.fmean(val):.2f}; {len(test)} seed(s))"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
