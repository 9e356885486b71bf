"""Does the study's evaluation budget rank the sets as a longer one does? (issue 19, item 4)

The study trains every set for the steps of 2 full-data epochs; the paper's rule is 50. Here
the random subset, the oracle window and the SelMatch set of plan v2 at 1 % (IPC 60, the sets
committed whole) are trained with the study's protocol (ConvNet width 32, SGD lr 0.1 cosine,
batch 128; DSA on real subsets, combined augmentation on the SelMatch set) for the steps of 2
and of 10 full-data epochs, with the current code (the fidelity fixes in). 2 epochs: 3 seeds
(as the study); 10 epochs: ``--seeds-long`` seeds (default 1: five times the cost per seed).
One JSON per (set, budget) in ``experiments/results/eval-budget/``, skipped when it exists.

    python experiments/eval_budget.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from selmatch.data import balanced_subset, holdout_split, load_dataset
from selmatch.evaluate import EvalConfig, evaluate_set
from selmatch.io import write_json
from selmatch.models import ModelConfig
from selmatch.synthetic import SyntheticSet
from selmatch.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "eval-budget"
SETS = ROOT / "experiments" / "results" / "fmnist-study-v2" / "ipc60-sets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds-long", type=int, default=1,
                        help="seeds of the 10-epoch evaluations (default: 1)")  # fmt: skip
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("fashion-mnist")
    split = holdout_split(dataset.train_labels, dataset.num_classes)
    random = balanced_subset(dataset.train_labels, 10, 60, seed=0, among=split.pool)
    window = SyntheticSet.load(SETS / "window-ipc60")
    selmatch = SyntheticSet.load(SETS / "distill-selmatch-ipc60")
    sets = {
        "random": (dataset.train_images[random], dataset.train_labels[random], None, "dsa"),
        "window": (window.images, window.labels, None, "dsa"),
        "selmatch": (selmatch.images, selmatch.labels, selmatch.distill_mask, "combined"),
    }
    for full_epochs, seeds in ((2.0, 3), (10.0, args.seeds_long)):
        for name, (images, labels, mask, augment) in sets.items():
            path = OUT / f"{name}-ipc60-full{full_epochs:g}.json"
            if path.exists():
                continue
            config = EvalConfig(model=ModelConfig(width=32), train=TrainConfig(augment=augment),
                                num_seeds=seeds, full_epochs=full_epochs)  # fmt: skip
            started = time.perf_counter()
            result = evaluate_set(images, labels, dataset, config, split=split, dsa_mask=mask)
            write_json(path, {"set": name, "ipc": 60, "full_epochs": full_epochs,
                              "augment": augment, "result": result.to_dict(),
                              "seconds": time.perf_counter() - started})  # fmt: skip
            print(f"[budget] {name} full:{full_epochs:g}: {result.summary()}", flush=True)
    print(table())
    return 0


def table() -> str:
    lines = ["| set (IPC 60, 1 %) | 2 full-data epochs (3 seeds) | 10 full-data epochs |",
             "|---|---|---|"]  # fmt: skip
    for name in ("random", "window", "selmatch"):
        cells = []
        for budget in ("2", "10"):
            path = OUT / f"{name}-ipc60-full{budget}.json"
            if not path.exists():
                cells.append("—")
                continue
            result: dict[str, Any] = json.loads(path.read_text())["result"]
            cells.append(
                f"{100 * result['test_mean']:.2f} ± {100 * result['test_std']:.2f} "
                f"(val {100 * result['val_mean']:.2f}; {len(result['seeds'])} seed(s))"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
