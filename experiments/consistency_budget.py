"""Which difficulty score gives windows that beat a random subset, at the quick preset's scale?

For each score — EL2N at epoch 1 of the quick preset's experts (what the demo ranked by
before), and the consistency score at a few budgets — and for IPC 10 and 50 (the demo's),
every window of the β grid (data-fraction 0, 0.1, ..., 0.9) and the random class-balanced
subset are trained with the quick preset's trial budget (ConvNet width 16, 50 epochs, DSA),
2 seeds each. The score's cost is measured too. One JSON file per (score, IPC) goes to
``experiments/results/consistency-budget/`` and is skipped when it exists (resumable); the
table is printed at the end and written to ``table.md`` there (docs/study-log.md quotes it).

    python experiments/consistency_budget.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from selmatch.core.io import write_json
from selmatch.data import holdout_split, load_dataset
from selmatch.difficulty.scores import ScoreTable
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.evaluation.sweep import evaluate_random, evaluate_window
from selmatch.selection.consistency import ConsistencyConfig, estimate_consistency
from selmatch.selection.window import WindowSpec
from selmatch.training.experts import ExpertConfig, train_experts
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "consistency-budget"
WORK = ROOT / "runs" / "consistency-budget"
BETAS = tuple(round(0.1 * i, 1) for i in range(10))
IPCS = (10, 50)
W16 = ModelConfig(width=16)
TRIAL = EvalConfig(model=W16, train=TrainConfig(epochs=50, augment="dsa"), num_seeds=2)
CONSISTENCY = {
    "consistency-w16-e4-1000": ConsistencyConfig(model=W16, epochs=4, per_class=1000),
    "consistency-w16-e8-1000": ConsistencyConfig(model=W16, epochs=8, per_class=1000),
    "consistency-w16-e4-1000-k8": ConsistencyConfig(
        model=W16, epochs=4, per_class=1000, num_networks=8
    ),
    "consistency-w32-e6-all": ConsistencyConfig(model=ModelConfig(width=32), epochs=6),
}
EXPERTS = ExpertConfig(model=W16, num_experts=2, epochs=4, per_class=1000, el2n_epoch=1)


def score_tables(dataset: Any) -> dict[str, tuple[torch.Tensor, float]]:
    """{score name: (hardness, seconds to make it)}."""
    tables = {}
    started = time.perf_counter()
    experts = WORK / "experts-quick"
    train_experts(dataset, EXPERTS, experts, progress=False)
    manifest = json.loads((experts / "manifest.json").read_text())
    seconds = sum(sum(v) for v in manifest["epoch_seconds"].values()) or (
        time.perf_counter() - started
    )
    tables["el2n-quick-experts"] = (ScoreTable.load(experts).hardness("el2n"), seconds)
    for name, config in CONSISTENCY.items():
        directory = WORK / name
        table = estimate_consistency(dataset, config, directory, progress=False)
        spent = json.loads((directory / "consistency.json").read_text())["total_seconds"]
        tables[name] = (table.hardness("consistency"), spent)
        print(f"[budget] {name}: {spent:.0f} s", flush=True)
    return tables


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("fashion-mnist")
    split = holdout_split(dataset.train_labels, dataset.num_classes)
    tables = score_tables(dataset)
    for ipc in IPCS:
        path = OUT / f"random-ipc{ipc}.json"
        if not path.exists():
            runs = [evaluate_random(dataset, split, ipc, TRIAL, seed=s).to_dict() for s in (0, 1)]
            write_json(path, {"ipc": ipc, "subset_seeds": [0, 1], "results": runs})
        for name, (hardness, seconds) in tables.items():
            path = OUT / f"{name}-ipc{ipc}.json"
            if path.exists():
                continue
            rows = {}
            for beta in BETAS:
                spec = WindowSpec(ipc, beta, 0.0, "data-fraction")
                rows[str(beta)] = evaluate_window(dataset, split, hardness, spec, TRIAL).to_dict()
            write_json(path, {"score": name, "ipc": ipc, "score_seconds": seconds, "rows": rows})
            best = max(rows, key=lambda b: rows[b]["val_mean"])
            print(
                f"[budget] {name} IPC {ipc}: best β {best} val "
                f"{100 * rows[best]['val_mean']:.2f} test {100 * rows[best]['test_mean']:.2f}",
                flush=True,
            )
    table = summary()
    (OUT / "table.md").write_text(table)
    print(table)
    return 0


def summary() -> str:
    lines = [
        "| score | cost (s, 2 cores) | "
        + " | ".join(f"IPC {i}: best β (val) | val % | test %" for i in IPCS)
        + " |",
        "|---|---|" + "---|---|---|" * len(IPCS),
    ]
    randoms = {
        i: json.loads((OUT / f"random-ipc{i}.json").read_text())
        for i in IPCS
        if (OUT / f"random-ipc{i}.json").exists()
    }
    names = ["el2n-quick-experts", *CONSISTENCY]
    for name in names:
        cells, cost = [], ""
        for ipc in IPCS:
            path = OUT / f"{name}-ipc{ipc}.json"
            if not path.exists():
                cells += ["—", "—", "—"]
                continue
            payload = json.loads(path.read_text())
            rows, cost = payload["rows"], f"{payload['score_seconds']:.0f}"
            best = max(rows, key=lambda b: rows[b]["val_mean"])
            cells += [
                best,
                f"{100 * rows[best]['val_mean']:.2f}",
                f"{100 * rows[best]['test_mean']:.2f}",
            ]
        lines.append(f"| {name} | {cost} | " + " | ".join(cells) + " |")
    cells = []
    for ipc in IPCS:
        if ipc not in randoms:
            cells += ["—", "—", "—"]
            continue
        runs = randoms[ipc]["results"]
        val = sum(r["val_mean"] for r in runs) / len(runs)
        test = sum(r["test_mean"] for r in runs) / len(runs)
        cells += ["(2 subsets)", f"{100 * val:.2f}", f"{100 * test:.2f}"]
    lines.append("| random subset | 0 | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
