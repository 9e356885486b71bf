"""Bad-input cases: saved sets whose tensors no reader can use (NaN pixels, integer images,
labels out of range, a mask of the wrong length), distillation settings outside their range,
a device that is not one, and damaged distillation checkpoints met by ``--resume``.

The inputs (prefix ``sets-``): a saved set per fault (``sets-nan``, ``sets-uint8``, ...), each a
copy of ``good-set`` (4 Fashion-MNIST-sized images, labels 0 0 1 1) with one thing wrong;
``sets-experts/`` the manifest of two width-4 ConvNet experts and empty expert files (the
checkpoint checks come before any expert is read); ``sets-ckpt-*/checkpoint/`` the checkpoint
of ``selmatch distill --method mtt --ipc 2`` with default settings, with one thing wrong.
Resumes with other experts, scores or data need a real distillation: tests/test_distill.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

MANIFEST = {
    "kind": "selmatch-set",
    "format_version": 1,
    "dataset": "fashion-mnist",
    "mean": [0.286],
    "std": [0.353],
    "num_classes": 10,
    "ipc": 2,
    "method": "test",
}
RESUME = "selmatch distill --method mtt --ipc 2 --experts sets-experts --resume --out"

# fmt: off
CASES = [
    # saved sets, checked where every command reads them
    ("selmatch evaluate --set sets-nan", "sets-nan/set.safetensors"),
    ("selmatch export sets-nan --out exported", "sets-nan/set.safetensors"),
    ("selmatch coverage --set sets-nan", "sets-nan/set.safetensors"),
    ("selmatch evaluate --set sets-uint8", "sets-uint8/set.safetensors"),
    ("selmatch evaluate --set sets-label-10", "sets-label-10/set.safetensors"),
    ("selmatch export sets-float-labels --out exported", "sets-float-labels/set.safetensors"),
    ("selmatch evaluate --set sets-short-labels", "sets-short-labels/set.safetensors"),
    ("selmatch evaluate --set sets-short-mask", "sets-short-mask/set.safetensors"),
    ("selmatch coverage --set sets-mask-2", "sets-mask-2/set.safetensors"),
    ("selmatch evaluate --set sets-32px", "sets-32px/set.safetensors"),
    ("selmatch evaluate --set sets-3d", "sets-3d/set.safetensors"),
    ("selmatch export sets-classes --out exported", "sets-classes/manifest.json"),
    # distillation settings
    ("selmatch distill --ipc 5 --iterations 0", "--iterations"),
    ("selmatch distill --ipc 5 --seed -1", "--seed"),
    ("selmatch distill --ipc 5 --lr-images inf", "--lr-images"),
    # the device
    ("selmatch distill --ipc 5 --device tpu:0", "--device"),
    ("selmatch evaluate --ipc 5 --device tpu:0", "--device"),
    # the search's devices: their form checked on the head, before Ray (whether a worker has
    # the device is checked on the worker)
    ("python tune/search_alpha_beta.py --override short.device=tpu",
     "--override short.device=tpu"),
    ("python tune/search_alpha_beta.py --override final.device=cuda:x",
     "--override final.device=cuda:x"),
    # damaged checkpoints
    (f"{RESUME} sets-ckpt-iteration", "sets-ckpt-iteration/checkpoint/state.json"),
    (f"{RESUME} sets-ckpt-stage", "sets-ckpt-stage/checkpoint/state.json"),
    (f"{RESUME} sets-ckpt-losses", "sets-ckpt-losses/checkpoint/state.json"),
    (f"{RESUME} sets-ckpt-ahead --iterations 100", "--iterations"),
    (f"{RESUME} sets-ckpt-shape", "sets-ckpt-shape/checkpoint/state.safetensors"),
    (f"{RESUME} sets-ckpt-nan", "sets-ckpt-nan/checkpoint/state.safetensors"),
    (f"{RESUME} sets-ckpt-lr", "sets-ckpt-lr/checkpoint/state.safetensors"),
]
# fmt: on


def _set(folder: Path, manifest: dict | None = None, **changes: torch.Tensor) -> None:
    tensors = {
        "images": torch.zeros(4, 1, 28, 28),
        "labels": torch.tensor([0, 0, 1, 1]),
        "distill_mask": torch.tensor([1, 0, 1, 0], dtype=torch.uint8),
    } | changes
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "set.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest or MANIFEST))


def _experts(folder: Path) -> dict:
    """An experts folder ``selmatch distill`` accepts until it reads an expert; its config."""
    from selmatch.distillation.matching import student_template
    from selmatch.training.experts import ExpertConfig
    from selmatch.training.models import ModelConfig, build_model
    from selmatch.training.params import ParamLayout

    config = ExpertConfig(model=ModelConfig(width=4), num_experts=2, epochs=12)
    layout = ParamLayout.of(student_template(build_model(config.model, (1, 28, 28), 10)))
    folder.mkdir()
    for index in range(2):
        save_file(
            {"epoch_000": torch.zeros(layout.numel)},
            str(folder / f"expert_{index:03d}.safetensors"),
        )
    manifest = {
        "kind": "selmatch-experts",
        "format_version": 1,
        "config": config.to_dict(),
        "layout": layout.to_dict(),
        "num_params": layout.numel,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _checkpoint(folder: Path, state: dict, tensors: dict) -> None:
    """The checkpoint of ``selmatch distill --method mtt --ipc 2`` (20 images) after one
    iteration, with ``state`` and ``tensors`` changed (``None``: left out)."""
    from selmatch.distillation.distill import DistillConfig, flat_settings
    from selmatch.distillation.target import SetSpec

    target = SetSpec(method="mtt", ipc=2, alpha=1.0)
    config = DistillConfig().resolved(target)
    record = {
        "config": flat_settings(target, config),
        "stage": 0,
        "iteration": 1,
        "losses": [0.5],
        "seconds": 1.0,
        "stage_lrs": [],
    } | state
    saved = {"images": torch.zeros(20, 1, 28, 28), "syn_lr": torch.tensor([0.01])} | tensors
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "state.json").write_text(json.dumps(record))
    save_file(
        {k: v for k, v in saved.items() if v is not None},
        str(folder / "checkpoint" / "state.safetensors"),
    )


def build(root: Path) -> None:
    _set(
        root / "sets-nan",
        images=torch.zeros(4, 1, 28, 28).index_fill_(0, torch.tensor([1]), float("nan")),
    )
    _set(root / "sets-uint8", images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    _set(root / "sets-label-10", labels=torch.tensor([0, 0, 1, 10]))
    _set(root / "sets-float-labels", labels=torch.tensor([0.0, 0.0, 1.0, 1.0]))
    _set(root / "sets-short-labels", labels=torch.tensor([0, 0, 1]))
    _set(root / "sets-short-mask", distill_mask=torch.tensor([1, 0, 1], dtype=torch.uint8))
    _set(root / "sets-mask-2", distill_mask=torch.tensor([1, 0, 2, 0], dtype=torch.uint8))
    _set(
        root / "sets-32px",
        MANIFEST | {"image_shape": [1, 28, 28]},
        images=torch.zeros(4, 1, 32, 32),
    )
    _set(root / "sets-3d", images=torch.zeros(4, 28, 28))
    _set(root / "sets-classes", MANIFEST | {"num_classes": 0})
    _experts(root / "sets-experts")
    _checkpoint(root / "sets-ckpt-iteration", {"iteration": -3}, {})
    _checkpoint(root / "sets-ckpt-stage", {"stage": 2}, {})
    _checkpoint(root / "sets-ckpt-losses", {"losses": "0.5"}, {})
    _checkpoint(root / "sets-ckpt-ahead", {"iteration": 150}, {})
    _checkpoint(root / "sets-ckpt-shape", {}, {"images": torch.zeros(40, 1, 28, 28)})
    _checkpoint(root / "sets-ckpt-nan", {}, {"images": torch.full((20, 1, 28, 28), float("nan"))})
    _checkpoint(root / "sets-ckpt-lr", {}, {"syn_lr": torch.tensor([float("inf")])})
