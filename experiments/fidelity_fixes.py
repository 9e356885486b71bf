"""Before/after measurements of the fidelity fixes of issue 19 (docs/study-log.md, "Issue
19"), on Fashion-MNIST at 1 % (IPC 60) with the study's evaluation protocol, and one
distillation check at the quick preset's scale.

The fixes are one after another, each measured against the state before it:

1. ConvNet pads a 28x28 input by 3 in its first conv (maps 32/16/8/4, as DC/DSA/MTT); before:
   padding 1 (28/14/7/3). Measured on the random subset and on the plan-v2 SelMatch set of
   IPC 60 (their committed plan-v2 evaluations are the "before").
2. crop+flip (``D_select`` under combined augmentation) pads with black pixels; before: 0 in
   normalised space (grey).
3. combined augmentation draws the DSA operation per image; before: one per batch.
4. SelMatch's learnable lr starts at 0.001 (its authors' scripts); before: 0.01 (MTT's).
   Distillation needs experts of the new ConvNet, so this one is measured at the quick preset's
   scale (width 16, experts 2 x 4 epochs on 1,000 images per class, IPC 10).

Steps 2 and 3 undo a fix in-process for the "before" (the library has no switch back); each
step writes one JSON file to ``experiments/results/fidelity-fixes/`` and is skipped when the
file exists, so the script resumes.

    python experiments/fidelity_fixes.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import selmatch.training.augment
import selmatch.training.train
from selmatch.core.io import write_json
from selmatch.data import balanced_subset, holdout_split, load_dataset
from selmatch.distillation.distill import DistillConfig, distill, flat_settings
from selmatch.distillation.target import SetSpec
from selmatch.evaluation.evaluate import EvalConfig, evaluate_set
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.experts import ExpertConfig, ExpertSet, train_experts
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results" / "fidelity-fixes"
V2 = ROOT / "experiments" / "results" / "fmnist-study-v2"
SELMATCH_SET = V2 / "ipc60-sets" / "distill-selmatch-ipc60"
STUDY_EVAL = {"width": 32, "full_epochs": 2.0, "seeds": 3}
QUICK_EVAL = {"width": 16, "full_epochs": 2.0, "seeds": 3}


def eval_config(setting: dict[str, Any], augment: str) -> EvalConfig:
    return EvalConfig(
        model=ModelConfig(width=setting["width"]),
        train=TrainConfig(augment=augment),
        num_seeds=setting["seeds"],
        full_epochs=setting["full_epochs"],
    )


@contextmanager
def grey_crop_padding() -> Iterator[None]:
    """The state before fix 2: crop+flip pads with 0 in normalised space."""
    original = selmatch.training.train.black
    selmatch.training.train.black = lambda normalize, channels: torch.zeros(channels)
    try:
        yield
    finally:
        selmatch.training.train.black = original


@contextmanager
def dsa_per_batch() -> Iterator[None]:
    """The state before fix 3: one DSA operation per batch for ``D_distill``."""
    original = selmatch.training.augment.dsa_per_image
    selmatch.training.augment.dsa_per_image = selmatch.training.augment.dsa
    try:
        yield
    finally:
        selmatch.training.augment.dsa_per_image = original


def step(name: str, work: Callable[[], dict[str, Any]], **info: Any) -> dict[str, Any]:
    path = OUT / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"[fixes] {name} ...", flush=True)
    started = time.perf_counter()
    result = work()
    payload = {"name": name, **info, "result": result, "seconds": time.perf_counter() - started}
    write_json(path, payload)
    print(
        f"[fixes] {name}: test {100 * result['test_mean']:.2f} ± {100 * result['test_std']:.2f} %",
        flush=True,
    )
    return payload


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("fashion-mnist")
    split = holdout_split(dataset.train_labels, dataset.num_classes)
    saved = SyntheticSet.load(SELMATCH_SET)

    def random60() -> dict[str, Any]:
        indices = balanced_subset(dataset.train_labels, 10, 60, seed=0, among=split.pool)
        return evaluate_set(
            dataset.train_images[indices],
            dataset.train_labels[indices],
            dataset,
            eval_config(STUDY_EVAL, "dsa"),
            split=split,
        ).to_dict()

    def selmatch60() -> dict[str, Any]:
        return evaluate_set(
            saved.images,
            saved.labels,
            dataset,
            eval_config(STUDY_EVAL, "combined"),
            split=split,
            dsa_mask=saved.distill_mask,
        ).to_dict()

    step(
        "1-padding-random-ipc60",
        random60,
        fix="ConvNet padding 3 on 28x28",
        before=str(V2 / "evals" / "eval-random-ipc60.json"),
    )
    with grey_crop_padding(), dsa_per_batch():
        step(
            "1-padding-selmatch-ipc60",
            selmatch60,
            fix="ConvNet padding 3 on 28x28",
            before=str(V2 / "evals" / "eval-distill-selmatch-ipc60.json"),
        )
    with dsa_per_batch():
        step(
            "2-black-crop-selmatch-ipc60",
            selmatch60,
            fix="crop+flip pads with black",
            before="1-padding-selmatch-ipc60.json",
        )
    step(
        "3-dsa-per-image-selmatch-ipc60",
        selmatch60,
        fix="DSA operation drawn per image",
        before="2-black-crop-selmatch-ipc60.json",
    )
    lr_init_check(dataset, split)
    return 0


def lr_init_check(dataset: Any, split: Any) -> None:
    experts_dir = ROOT / "runs" / "fidelity-fixes" / "experts-w16"
    config = ExpertConfig(model=ModelConfig(width=16), num_experts=2, epochs=4, per_class=1000)
    train_experts(dataset, config, experts_dir, progress=False)  # trains only what is missing
    experts = ExpertSet.load(experts_dir)
    from selmatch.difficulty.scores import ScoreTable

    hardness = ScoreTable.load(experts_dir).hardness("el2n")
    target = SetSpec(
        method="selmatch",
        ipc=10,
        beta=0.4,
        alpha=0.5,
        beta_convention="data-fraction",
        score="el2n",
    )
    for lr_init in (0.01, 0.001):
        distill_config = DistillConfig(
            n_student_steps=10,
            expert_epochs=2,
            max_start_epoch=2,
            syn_batch=64,
            iterations=100,
            checkpoint_every=100,
            lr_init=lr_init,
        )

        def work(config: DistillConfig = distill_config) -> dict[str, Any]:
            with tempfile.TemporaryDirectory() as directory:
                made = distill(
                    target, config, dataset, split, experts, hardness, directory, progress=False
                )
                result = evaluate_set(
                    made.images,
                    made.labels,
                    dataset,
                    eval_config(QUICK_EVAL, "combined"),
                    split=split,
                    dsa_mask=made.distill_mask,
                ).to_dict()
                return result | {"learned_lr": made.learned_lr}

        step(
            f"4-lr-init-{lr_init:g}-selmatch-ipc10",
            work,
            fix="SelMatch lr init 0.001",
            distill=flat_settings(target, distill_config),
        )


if __name__ == "__main__":
    sys.exit(main())
