"""A tiny trajectory-matching problem, shared by the tests of the batched trajectories and of
the speed levers: a small ConvNet, E starts near its parameters, targets near the starts, a set
of frozen and learnable images and one student plan per trajectory; and :class:`Settings`, a
distillation's set and matching settings as one, for the tests that run ``distill``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selmatch.distillation.distill import DistillConfig
from selmatch.distillation.matching import SyntheticTensors, plan_student_steps, student_template
from selmatch.distillation.target import SET_KEYS, SetSpec
from selmatch.training.augment import DSAConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout


def matching_case(
    *,
    trajectories: int,
    dtype: torch.dtype,
    n_frozen: int,
    n_learnable: int,
    steps: int,
    batch: int,
    shape: tuple[int, int, int],
    width: int = 4,
    depth: int = 2,
    norm: str = "batch",
    seed: int = 0,
) -> tuple[Any, ...]:
    """(template, layout, starts, targets, synthetic, lr, plans) of one case."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=width, depth=depth, norm=norm), shape, 10, seed=seed)
    template = student_template(model.to(dtype))
    layout = ParamLayout.of(template)
    base = layout.flatten(model).to(dtype)
    starts = base + 0.05 * torch.randn(trajectories, layout.numel, dtype=dtype)
    targets = starts + 0.02 * torch.randn_like(starts)
    images = torch.randn(n_frozen + n_learnable, *shape, dtype=dtype)
    synthetic = SyntheticTensors(
        images[:n_frozen],
        images[n_frozen:].clone().requires_grad_(True),
        torch.arange(n_frozen + n_learnable) % 10,
    )
    lr = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    generator = torch.Generator().manual_seed(seed)
    plans = [
        plan_student_steps(len(synthetic), steps, batch, shape[1:], DSAConfig(), generator)
        for _ in range(trajectories)
    ]
    return template, layout, starts, targets, synthetic, lr, plans


@dataclass(frozen=True)
class Settings:
    """A distillation's two parts, the set (:class:`SetSpec`) and its matching
    (:class:`DistillConfig`), built and changed as one: each setting goes to the part that
    declares it. ``distill(*settings.parts(), ...)`` runs it; ``settings.name`` reads either
    part."""

    target: SetSpec
    config: DistillConfig

    @classmethod
    def of(cls, **values: Any) -> Settings:
        return cls(SetSpec(), DistillConfig()).replace(**values)

    def replace(self, **changes: Any) -> Settings:
        target = {k: v for k, v in changes.items() if k in SET_KEYS}
        config = {k: v for k, v in changes.items() if k not in SET_KEYS}
        return Settings(self.target.replace(**target), self.config.replace(**config))

    def parts(self) -> tuple[SetSpec, DistillConfig]:
        return self.target, self.config

    def resolved(self) -> DistillConfig:
        """The matching settings a run of this set uses."""
        return self.config.resolved(self.target)

    def __getattr__(self, name: str) -> Any:
        part = self.target if name in SET_KEYS else self.config
        return getattr(part, name)
